//! Interop with the official Node runtime, `elasticio-sailor-nodejs` (pinned to
//! [`SAILOR_VERSION`]), in both directions, on the local RabbitMQ.
//!
//! Each test runs one five-step flow on a private topology. Steps alternate between the
//! official Sailor (child `node` processes running the component in
//! `tests/interop/node-component`) and Deckhand workers (in-process, [`Worker::start_with`]
//! with the small [`Tagger`] connector). Every step shares the crypto password/IV and loads its
//! definition from a mockito "platform API" (`GET /v1/tasks/{flow}/steps/{step}`, the only
//! call Sailor makes at start-up without `ELASTICIO_STARTUP_REQUIRED`; any other request fails
//! the test):
//!
//! ```text
//!  test ──▶ step_1 Node `stamp` ──data──▶ step_2 Deckhand `tag` ──data──▶ step_3 Node `stamp` ──▶ out
//!               │ error                        │ error
//!               ▼                              ▼
//!          step_4 Deckhand `inspectError`  step_5 Node `stamp`
//!          (ELASTICIO_INPUT_FORMAT=error)  (ELASTICIO_INPUT_FORMAT=error)
//! ```
//!
//! Three inputs go in: a normal one (through steps 1 → 2 → 3), one that makes the Node action
//! throw (Node's error envelope is decrypted by Deckhand's error handler, step 4) and one that
//! makes the Deckhand action fail (Deckhand's error envelope is decrypted by Sailor's error
//! handler, step 5). The inputs carry a `reply_to` header (a request-reply flow), so both
//! errors are also sent there. Queues tapped on every routing key let the test check each hop:
//! bodies, lineage headers (`parentMessageId`, `threadId`, `stepId`, `x-eio-meta-*`,
//! `reply_to`), passthrough, `protocolVersion`, that Deckhand's data events, error envelopes and
//! error replies have exactly the header names, AMQP types and properties of Sailor's, and —
//! after every process shut down gracefully — that each input was acked (nothing requeued) or
//! rejected (dead-lettered) exactly as Sailor would.
//!
//! The flow runs once with protocol version 1 (base64 bodies) and once with version 2 (raw
//! ciphertext) on every step.
//!
//! Needs `node` (v18+) and `npm` on `PATH` (the Sailor is installed once with `npm ci` under
//! `$CARGO_TARGET_TMPDIR/interop-node/` and reused) and RabbitMQ (`DECKHAND_TEST_AMQP_URI`,
//! default `amqp://guest:guest@127.0.0.1:5672/%2f`). Without them the tests FAIL, saying what
//! to install or start. Sailor's logs are printed when something goes wrong.

use deckhand_tests::broker::{Topology, amqp_uri};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine as _;
use deckhand::connector::{
    Connector, ConnectorError, Context, ErrorKind, Function, Input, Message, Verification,
    VerifyContext,
};
use deckhand::credentials::Credentials;
use deckhand::runtime::amqp::TransportOptions;
use deckhand::runtime::config::RuntimeConfig;
use deckhand::runtime::crypto::{MessageCipher, ProtocolVersion};
use deckhand::runtime::protocol::{header_number, header_string, js_number, js_string};
use deckhand::runtime::worker::Worker;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The pinned Sailor release (the latest 2.7.x); `tests/interop/node-component/package.json`
/// and its lockfile pin the same version.
const SAILOR_VERSION: &str = "2.7.8";
const SAILOR_PACKAGE: &str = "elasticio-sailor-nodejs";
const INSTALL_HINT: &str = "install Node.js v18 or later with npm (e.g. `apt-get install nodejs npm`, \
     or from https://nodejs.org/) and make sure `node` and `npm` are on PATH";

const PASSWORD: &str = "testCryptoPassword";
const IV: &str = "iv=any16_symbols";
const API_USERNAME: &str = "interop-user";
const API_KEY: &str = "interop-api-key";

/// How long any single hop may take (generous: a loaded 2-core machine).
const HOP: Duration = Duration::from_secs(45);

// ---------------------------------------------------------------------------------------------
// Installing the official Sailor
// ---------------------------------------------------------------------------------------------

fn component_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/node-component")
}

fn install_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("interop-node")
        .join(format!("sailor-{SAILOR_VERSION}"))
}

fn tool_version(tool: &str) -> Result<String, String> {
    match std::process::Command::new(tool).arg("--version").output() {
        Ok(out) if out.status.success() => {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        }
        Ok(out) => Err(format!(
            "`{tool} --version` failed ({}): {}. The Sailor interop test needs Node.js and npm: {INSTALL_HINT}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!(
            "`{tool}` not found ({e}). The Sailor interop test needs Node.js and npm: {INSTALL_HINT}"
        )),
    }
}

/// Copies the component (everything but `node_modules`) into the install directory.
fn copy_component(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::create_dir_all(to).map_err(|e| format!("creating {}: {e}", to.display()))?;
    let entries =
        std::fs::read_dir(from).map_err(|e| format!("reading {}: {e}", from.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| e.to_string())?;
        let name = entry.file_name();
        if name == "node_modules" {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        if entry.file_type().map_err(|e| e.to_string())?.is_dir() {
            copy_component(&src, &dst)?;
        } else {
            let content =
                std::fs::read(&src).map_err(|e| format!("reading {}: {e}", src.display()))?;
            // Unchanged files are not rewritten (another test run may be reading them).
            if std::fs::read(&dst).ok().as_deref() != Some(&content[..]) {
                std::fs::write(&dst, &content)
                    .map_err(|e| format!("writing {}: {e}", dst.display()))?;
            }
        }
    }
    Ok(())
}

fn installed_sailor_version(dir: &Path) -> Option<String> {
    let manifest = dir
        .join("node_modules")
        .join(SAILOR_PACKAGE)
        .join("package.json");
    let manifest: Value = serde_json::from_slice(&std::fs::read(manifest).ok()?).ok()?;
    manifest["version"].as_str().map(str::to_owned)
}

/// Installs the pinned Sailor with the committed lockfile (`npm ci`), unless that exact
/// lockfile is already installed; returns the directory to run Sailor in.
fn install() -> Result<PathBuf, String> {
    let node = tool_version("node")?;
    let major: u32 = node
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if major < 18 {
        return Err(format!(
            "node {node} is too old for the Sailor interop test: {INSTALL_HINT}"
        ));
    }
    let npm = tool_version("npm")?;
    let dir = install_dir();
    copy_component(&component_source(), &dir)?;
    let lock = std::fs::read(dir.join("package-lock.json"))
        .map_err(|e| format!("the component's package-lock.json: {e}"))?;
    let marker = dir
        .join("node_modules")
        .join(".deckhand-installed-lock.json");
    if installed_sailor_version(&dir).as_deref() == Some(SAILOR_VERSION)
        && std::fs::read(&marker).ok().as_deref() == Some(&lock[..])
    {
        eprintln!(
            "interop: reusing {SAILOR_PACKAGE}@{SAILOR_VERSION} in {} (node {node}, npm {npm})",
            dir.display()
        );
        return Ok(dir);
    }
    eprintln!(
        "interop: installing {SAILOR_PACKAGE}@{SAILOR_VERSION} into {} with `npm ci` (node {node}, npm {npm}); the first install downloads ~115 packages …",
        dir.display()
    );
    let started = Instant::now();
    let out = std::process::Command::new("npm")
        .args([
            "ci",
            "--ignore-scripts",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
        ])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running npm: {e}. {INSTALL_HINT}"))?;
    if !out.status.success() {
        return Err(format!(
            "`npm ci` in {} failed ({}); is the npm registry reachable?\n{}\n{}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    match installed_sailor_version(&dir) {
        Some(v) if v == SAILOR_VERSION => {}
        other => {
            return Err(format!(
                "`npm ci` installed {SAILOR_PACKAGE} {other:?}, expected {SAILOR_VERSION}"
            ));
        }
    }
    std::fs::write(&marker, &lock).map_err(|e| format!("writing {}: {e}", marker.display()))?;
    eprintln!("interop: installed in {:.1?}", started.elapsed());
    Ok(dir)
}

/// The install, done once per test binary (the tests run in parallel threads).
async fn sailor_install() -> PathBuf {
    static INSTALL: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let result = tokio::task::spawn_blocking(|| INSTALL.get_or_init(install).clone())
        .await
        .expect("install task");
    result.unwrap_or_else(|e| panic!("{e}"))
}

// ---------------------------------------------------------------------------------------------
// A Sailor child process
// ---------------------------------------------------------------------------------------------

struct Sailor {
    step: String,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

fn pipe_lines(stream: impl AsyncRead + Unpin + Send + 'static, log: Arc<Mutex<Vec<String>>>) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            log.lock().unwrap().push(line);
        }
    });
}

impl Sailor {
    /// `node node_modules/elasticio-sailor-nodejs/run.js` in `dir` with exactly the given
    /// `ELASTICIO_*` variables (inherited ones are removed).
    fn spawn(dir: &Path, step: &str, vars: Vec<(String, String)>) -> Self {
        let mut cmd = Command::new("node");
        cmd.arg(format!("node_modules/{SAILOR_PACKAGE}/run.js"))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (name, _) in std::env::vars_os() {
            if let Some(name) = name.to_str()
                && (name.starts_with("ELASTICIO_")
                    || ["NODE_ENV", "LOG_LEVEL", "NODE_OPTIONS"].contains(&name))
            {
                cmd.env_remove(name);
            }
        }
        cmd.env("LOG_LEVEL", "debug").envs(vars);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning node for {step}: {e}. {INSTALL_HINT}"));
        let log = Arc::new(Mutex::new(Vec::new()));
        pipe_lines(child.stdout.take().expect("stdout"), log.clone());
        pipe_lines(child.stderr.take().expect("stderr"), log.clone());
        Self {
            step: step.to_owned(),
            child,
            log,
        }
    }

    /// `Err` with the reason if the process is gone.
    fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("Sailor {} exited early ({status})", self.step)),
            Err(e) => Err(format!("Sailor {}: {e}", self.step)),
        }
    }

    fn logged(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// Sailor's bunyan log, one short line per record (with error stacks).
    fn log_text(&self) -> String {
        let mut text = String::new();
        for line in self.log.lock().unwrap().iter() {
            let Ok(Value::Object(record)) = serde_json::from_str::<Value>(line) else {
                text.push_str(&format!("    {line}\n"));
                continue;
            };
            let level = match record.get("level").and_then(Value::as_u64) {
                Some(60) => "FATAL",
                Some(50) => "ERROR",
                Some(40) => "WARN",
                Some(30) => "INFO",
                Some(20) => "DEBUG",
                _ => "TRACE",
            };
            let msg = record.get("msg").and_then(Value::as_str).unwrap_or("");
            text.push_str(&format!("    {level} {msg}\n"));
            if let Some(stack) = record.get("err").and_then(|e| e.get("stack")) {
                text.push_str(&format!("      {}\n", stack.as_str().unwrap_or_default()));
            }
        }
        text
    }

    /// Stops Sailor as the platform does (SIGTERM: stop consuming, finish in-flight messages,
    /// close the connections, exit) and waits for it; SIGKILL after 20 s.
    async fn stop(mut self) -> (String, std::process::ExitStatus, String) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let status = match tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await {
            Ok(Ok(status)) => status,
            _ => {
                eprintln!("interop: Sailor {} ignored SIGTERM; killing it", self.step);
                let _ = self.child.start_kill();
                self.child.wait().await.expect("wait for the killed node")
            }
        };
        let log = self.log_text();
        (self.step, status, log)
    }
}

// ---------------------------------------------------------------------------------------------
// The Deckhand side: a small connector
// ---------------------------------------------------------------------------------------------

const DECKHAND_COMPONENT: &str = r#"{
  "title": "Deckhand interop (Rust)",
  "actions": {
    "tag": {"title": "Tag", "metadata": {"in": {}, "out": {}}},
    "inspectError": {"title": "Inspect an error", "metadata": {"in": {}, "out": {}}}
  }
}"#;

/// `tag`: the input body plus `taggedBy: "deckhand"` and what this step received; fails when
/// the body has `explodeInRust`. `inspectError` (an error-handler step): the decrypted error
/// envelope and the AMQP headers it came with.
struct Tagger;

#[async_trait]
impl Connector for Tagger {
    fn functions(&self) -> Vec<Function> {
        vec![Function::action("tag"), Function::action("inspectError")]
    }

    async fn verify_credentials(
        &self,
        _: &Credentials,
        _: &VerifyContext,
    ) -> Result<Verification, ConnectorError> {
        Ok(Verification::Verified)
    }

    async fn process(
        &self,
        function: &str,
        input: Input,
        ctx: &Context,
    ) -> Result<(), ConnectorError> {
        let message = input.message;
        match function {
            "tag" => {
                let mut body = message.body.as_object().cloned().unwrap_or_default();
                if let Some(reason) = body.get("explodeInRust") {
                    return Err(ConnectorError::new(
                        ErrorKind::Provider("DeckhandExplosion".into()),
                        format!("deckhand step exploded: {}", reason.as_str().unwrap_or("?")),
                    ));
                }
                let mut steps: Vec<&String> = message
                    .passthrough
                    .as_ref()
                    .map(|p| p.keys().collect())
                    .unwrap_or_default();
                steps.sort();
                body.insert("taggedBy".into(), json!("deckhand"));
                body.insert(
                    "deckhandSaw".into(),
                    json!({"id": message.id, "headers": message.headers, "passthroughSteps": steps}),
                );
                ctx.emit_data(Message::new(Value::Object(body))).await?;
            }
            "inspectError" => {
                let headers = &message.headers;
                ctx.emit_data(Message::new(json!({
                    "handledBy": "deckhand",
                    "error": message.body.get("error"),
                    "errorInput": message.body.get("errorInput"),
                    "sawHeaders": {
                        "stepId": headers.get("stepId"),
                        "messageId": headers.get("messageId"),
                        "threadId": headers.get("threadId"),
                    },
                })))
                .await?;
            }
            other => return Err(ConnectorError::other(format!("no function {other}"))),
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Broker topology (as sdk/tests/runtime_support, which lives in another package)
// ---------------------------------------------------------------------------------------------

/// A message taken from a queue.
struct Got {
    /// Decrypted (data) or parsed (error envelope) body.
    body: Value,
    headers: FieldTable,
    props: BasicProperties,
    raw: Vec<u8>,
}

impl Got {
    /// A string header; panics naming it (and showing all headers) when it is missing.
    fn header(&self, name: &str) -> String {
        header_string(&self.headers, name)
            .unwrap_or_else(|| panic!("no string header `{name}` in {:?}", self.headers))
    }
}

/// What a queue holds: encrypted messages, plain-JSON error envelopes, or anything (the body
/// is then `null`; see [`Got::raw`]).
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Data,
    ErrorEnvelope,
    Raw,
}

struct Flow {
    version: ProtocolVersion,
    topo: Topology,
    cipher: MessageCipher,
    flow_id: String,
    api: mockito::ServerGuard,
    sailors: Vec<Sailor>,
    workers: Vec<(String, oneshot::Sender<()>, JoinHandle<u8>)>,
    /// Error queues that should stay empty, shown when something goes wrong.
    watched_errors: Vec<(String, String)>,
    /// The `reply_to` routing key of the inputs (a request-reply flow).
    reply_to: String,
}

impl Flow {
    fn step_vars(
        &self,
        step: &str,
        comp: &str,
        function: &str,
        listen: &str,
    ) -> Vec<(String, String)> {
        let rk = |kind: &str| self.topo.rk(step, kind);
        [
            ("FLOW_ID", self.flow_id.clone()),
            ("EXEC_ID", format!("exec-{}", self.topo.id)),
            ("STEP_ID", step.to_owned()),
            ("CONTAINER_ID", format!("container-{step}")),
            ("WORKSPACE_ID", "workspace-interop".to_owned()),
            ("USER_ID", "user-interop".to_owned()),
            ("COMP_ID", comp.to_owned()),
            ("FUNCTION", function.to_owned()),
            ("API_URI", self.api.url()),
            ("API_USERNAME", API_USERNAME.to_owned()),
            ("API_KEY", API_KEY.to_owned()),
            ("AMQP_URI", amqp_uri()),
            ("LISTEN_MESSAGES_ON", listen.to_owned()),
            ("PUBLISH_MESSAGES_TO", self.topo.exchange.clone()),
            ("DATA_ROUTING_KEY", rk("message")),
            ("ERROR_ROUTING_KEY", rk("error")),
            ("REBOUND_ROUTING_KEY", rk("rebound")),
            ("SNAPSHOT_ROUTING_KEY", rk("snapshot")),
            ("MESSAGE_CRYPTO_PASSWORD", PASSWORD.to_owned()),
            ("MESSAGE_CRYPTO_IV", IV.to_owned()),
            ("PROTOCOL_VERSION", self.version.number().to_string()),
            // Deckhand's default (Node's is transient): both sides publish alike, so the
            // wire shapes compare.
            ("AMQP_PERSISTENT_MESSAGES", "true".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (format!("ELASTICIO_{k}"), v))
        .collect()
    }

    /// Serves `GET /v1/tasks/{flow}/steps/{step}` (Basic auth) once.
    async fn serve_step(
        &mut self,
        step: &str,
        comp: &str,
        function: &str,
        config: Value,
        passthrough: bool,
    ) -> mockito::Mock {
        let auth =
            base64::engine::general_purpose::STANDARD.encode(format!("{API_USERNAME}:{API_KEY}"));
        self.api
            .mock(
                "GET",
                format!("/v1/tasks/{}/steps/{step}", self.flow_id).as_str(),
            )
            .match_header("authorization", format!("Basic {auth}").as_str())
            .with_header("content-type", "application/json")
            .with_body(
                json!({
                    "id": step,
                    "comp_id": comp,
                    "function": function,
                    "config": config,
                    "snapshot": {},
                    "is_passthrough": passthrough,
                    "variables": {},
                })
                .to_string(),
            )
            .expect(1)
            .create_async()
            .await
    }

    fn spawn_sailor(&mut self, dir: &Path, step: &str, listen: &str, extra: &[(&str, &str)]) {
        let mut vars = self.step_vars(step, "comp-node", "stamp", listen);
        vars.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        self.sailors.push(Sailor::spawn(dir, step, vars));
    }

    async fn start_worker(
        &mut self,
        step: &str,
        function: &str,
        listen: &str,
        extra: &[(&str, &str)],
    ) {
        let mut vars = self.step_vars(step, "comp-deckhand", function, listen);
        vars.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let cfg = RuntimeConfig::from_vars(vars).expect("Deckhand worker configuration");
        let mut options = TransportOptions::from_config(&cfg);
        options.connection_name = format!("deckhand-interop-{}-{step}", self.topo.id);
        let worker = Worker::start_with(
            Arc::new(Tagger),
            Arc::new(cfg),
            &serde_json::from_str(DECKHAND_COMPONENT).unwrap(),
            options,
        )
        .await
        .unwrap_or_else(|e| panic!("the Deckhand worker for {step} did not start: {e}"));
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(worker.run_until(async move {
            let _ = stopped.await;
        }));
        self.workers.push((step.to_owned(), stop, handle));
    }

    /// Everything that helps to understand a failure: Sailor logs and error envelopes.
    async fn report(&mut self) -> String {
        let mut text = String::new();
        for sailor in &mut self.sailors {
            let state = match sailor.check_alive() {
                Ok(()) => "running".to_owned(),
                Err(e) => e,
            };
            text.push_str(&format!(
                "\n--- Sailor {} ({state}), log:\n{}",
                sailor.step,
                sailor.log_text()
            ));
        }
        for (what, queue) in self.watched_errors.clone() {
            while let Some(got) = self.topo.try_get(&queue).await {
                text.push_str(&format!(
                    "\n--- error published by {what}: {}",
                    self.describe_error_envelope(&got.delivery.data)
                ));
            }
        }
        text
    }

    fn describe_error_envelope(&self, raw: &[u8]) -> String {
        let Ok(envelope) = serde_json::from_slice::<Value>(raw) else {
            return format!("not JSON: {}", String::from_utf8_lossy(raw));
        };
        match envelope["error"].as_str().map(|e| {
            self.cipher
                .decrypt_json::<Value>(e.as_bytes(), ProtocolVersion::V1)
        }) {
            Some(Ok(error)) => error.to_string(),
            other => format!("undecryptable ({other:?}): {envelope}"),
        }
    }

    /// Panics with `what` and the [`report`](Self::report); `match flow.fail(..).await {}`.
    async fn fail(&mut self, what: String) -> std::convert::Infallible {
        let report = self.report().await;
        panic!("{what}{report}");
    }

    /// Waits until every Sailor logged that it consumes, failing early if one died.
    async fn wait_sailors_ready(&mut self) {
        let deadline = Instant::now() + HOP;
        loop {
            let mut all = true;
            for i in 0..self.sailors.len() {
                if let Err(e) = self.sailors[i].check_alive() {
                    match self.fail(e).await {}
                }
                all &= self.sailors[i].logged("Fully initialized and waiting for messages");
            }
            if all {
                return;
            }
            if Instant::now() > deadline {
                match self
                    .fail(format!("the Sailors were not ready within {HOP:?}"))
                    .await {}
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Publishes an input to step_1 as an upstream step would; returns its `messageId`.
    async fn send(&self, id: &str, body: Value, thread: &str) -> String {
        let message =
            json!({"id": id, "body": body, "attachments": {}, "headers": {}, "metadata": {}});
        let payload = self.cipher.encrypt_json(&message, self.version);
        let mut headers = FieldTable::default();
        for (name, value) in [
            ("messageId", js_string(id)),
            ("threadId", js_string(thread)),
            ("stepId", js_string("upstream")),
            ("reply_to", js_string(self.reply_to.clone())),
            ("x-eio-meta-flow-tag", js_string("interop")),
            (
                "protocolVersion",
                js_number(i64::from(self.version.number())),
            ),
        ] {
            headers.insert(name.into(), value);
        }
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("utf8".into())
            .with_headers(headers);
        self.topo
            .publish(&self.topo.rk("step_1", "input"), &payload, props)
            .await;
        id.to_owned()
    }

    /// Takes `n` messages from `queue`, failing with a report after [`HOP`].
    async fn take(&mut self, queue: &str, n: usize, kind: Kind, what: &str) -> Vec<Got> {
        let deadline = Instant::now() + HOP;
        let mut got = Vec::new();
        while got.len() < n {
            if let Some(message) = self.topo.try_get(queue).await {
                let delivery = message.delivery;
                let headers = delivery.properties.headers().clone().unwrap_or_default();
                let body = match kind {
                    Kind::Raw => Value::Null,
                    Kind::ErrorEnvelope => serde_json::from_slice(&delivery.data)
                        .unwrap_or_else(|e| panic!("{what}: error envelope is not JSON: {e}")),
                    Kind::Data => {
                        let version = match header_number(&headers, "protocolVersion") {
                            Some(v) if v >= 2.0 => ProtocolVersion::V2,
                            _ => ProtocolVersion::V1,
                        };
                        match self.cipher.decrypt_json(&delivery.data, version) {
                            Ok(body) => body,
                            Err(e) => match self
                                .fail(format!("{what}: cannot decrypt ({e}); headers {headers:?}"))
                                .await {},
                        }
                    }
                };
                got.push(Got {
                    body,
                    headers,
                    props: delivery.properties.clone(),
                    raw: delivery.data.clone(),
                });
                continue;
            }
            for i in 0..self.sailors.len() {
                if let Err(e) = self.sailors[i].check_alive() {
                    match self.fail(format!("waiting for {what}: {e}")).await {}
                }
            }
            if Instant::now() > deadline {
                let what = format!(
                    "waiting for {what}: got {} of {n} within {HOP:?}",
                    got.len()
                );
                match self.fail(what).await {}
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        got
    }

    async fn take_one(&mut self, queue: &str, kind: Kind, what: &str) -> Got {
        self.take(queue, 1, kind, what).await.remove(0)
    }

    /// Decrypts the `error` field of an envelope (always base64, whatever the version).
    fn envelope_error(&self, envelope: &Value) -> Value {
        let text = envelope["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no `error` in {envelope}"));
        self.cipher
            .decrypt_json(text.as_bytes(), ProtocolVersion::V1)
            .unwrap_or_else(|e| panic!("cannot decrypt the envelope's error: {e}"))
    }

    /// Decrypts the `errorInput` field of an envelope (always base64).
    fn envelope_input(&self, envelope: &Value) -> Value {
        let text = envelope["errorInput"]
            .as_str()
            .unwrap_or_else(|| panic!("no `errorInput` in {envelope}"));
        self.cipher
            .decrypt_json(text.as_bytes(), ProtocolVersion::V1)
            .unwrap_or_else(|e| panic!("cannot decrypt the envelope's errorInput: {e}"))
    }
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
}

/// Headers every step adds; `stepId`, `compId`, `function` name the publishing step.
fn assert_step_headers(got: &Got, flow: &Flow, step: &str, comp: &str, function: &str) {
    assert_eq!(got.header("stepId"), step, "stepId");
    assert_eq!(got.header("compId"), comp, "compId");
    assert_eq!(got.header("function"), function, "function");
    assert_eq!(got.header("taskId"), flow.flow_id, "taskId");
    assert_eq!(
        got.header("execId"),
        format!("exec-{}", flow.topo.id),
        "execId"
    );
    assert_eq!(
        got.header("containerId"),
        format!("container-{step}"),
        "containerId"
    );
    assert_eq!(
        got.header("workspaceId"),
        "workspace-interop",
        "workspaceId"
    );
    assert_eq!(got.header("userId"), "user-interop", "userId");
    for ts in ["start", "end"] {
        assert!(
            matches!(got.headers.inner().get(ts), Some(AMQPValue::LongLongInt(_))),
            "`{ts}` is a 64-bit integer (ms) from {step}: {:?}",
            got.headers.inner().get(ts)
        );
    }
    assert_eq!(
        got.props.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json"),
        "content type from {step}"
    );
}

/// Data events carry `protocolVersion` as amqplib types a small number (a signed byte).
fn assert_version_header(got: &Got, version: ProtocolVersion, from: &str) {
    assert_eq!(
        got.headers.inner().get("protocolVersion"),
        Some(&AMQPValue::ShortShortInt(version.number() as i8)),
        "protocolVersion header from {from}"
    );
    if version == ProtocolVersion::V2 {
        assert!(
            base64::engine::general_purpose::STANDARD
                .decode(&got.raw)
                .is_err(),
            "a v2 body from {from} is raw ciphertext, not base64"
        );
    } else {
        assert!(
            base64::engine::general_purpose::STANDARD
                .decode(&got.raw)
                .is_ok(),
            "a v1 body from {from} is base64 text"
        );
    }
}

/// What a consumer sees of a publication besides the values: each header's name and AMQP
/// type, and every other property. `publishId` is left out: a Deckhand addition (the same on
/// every attempt of one publish, so a downstream Deckhand step recognises a republished copy)
/// that Sailor neither sends nor reads.
fn wire_shape(got: &Got) -> (Vec<String>, String) {
    let mut headers: Vec<String> = got
        .headers
        .inner()
        .iter()
        .filter(|(name, _)| name.as_str() != "publishId")
        .map(|(name, value)| {
            let debug = format!("{value:?}");
            let kind = debug.split('(').next().unwrap_or_default().to_owned();
            format!("{name}: {kind}")
        })
        .collect();
    headers.sort();
    let others = got.props.clone().with_headers(FieldTable::default());
    (headers, format!("{others:?}"))
}

fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    keys.sort();
    keys
}

async fn sailor_and_deckhand_interoperate(version: ProtocolVersion) {
    init_tracing();
    let started = Instant::now();
    let dir = sailor_install().await;
    let mut topo = Topology::new().await;
    let v = version.number();
    eprintln!("interop v{v}: topology {}", topo.id);

    // Inputs (dead-lettering rejects), taps on every routing key, and the final outputs.
    let (in1, dead1) = topo.step_queue("step_1", topo.rk("step_1", "input")).await;
    let (in2, dead2) = topo
        .step_queue("step_2", topo.rk("step_1", "message"))
        .await;
    let (in3, dead3) = topo
        .step_queue("step_3", topo.rk("step_2", "message"))
        .await;
    let (in4, dead4) = topo.step_queue("step_4", topo.rk("step_1", "error")).await;
    let (in5, dead5) = topo.step_queue("step_5", topo.rk("step_2", "error")).await;
    let tap1 = topo.queue("tap-1-data", topo.rk("step_1", "message")).await;
    let tap1_err = topo.queue("tap-1-error", topo.rk("step_1", "error")).await;
    let tap2 = topo.queue("tap-2-data", topo.rk("step_2", "message")).await;
    let tap2_err = topo.queue("tap-2-error", topo.rk("step_2", "error")).await;
    let out3 = topo.queue("out-3", topo.rk("step_3", "message")).await;
    let err3 = topo.queue("err-3", topo.rk("step_3", "error")).await;
    let out4 = topo.queue("out-4", topo.rk("step_4", "message")).await;
    let err4 = topo.queue("err-4", topo.rk("step_4", "error")).await;
    let out5 = topo.queue("out-5", topo.rk("step_5", "message")).await;
    let reply_to = topo.rk("webhook", "reply");
    let replies = topo.queue("replies", reply_to.clone()).await;
    let err5 = topo.queue("err-5", topo.rk("step_5", "error")).await;

    let api = mockito::Server::new_async().await;
    let flow_id = format!("flow-{}", topo.id);
    let mut flow = Flow {
        version,
        cipher: MessageCipher::new(PASSWORD, IV).unwrap(),
        flow_id,
        api,
        sailors: Vec::new(),
        workers: Vec::new(),
        reply_to: reply_to.clone(),
        watched_errors: vec![
            ("step_3 (Node)".into(), err3.clone()),
            ("step_4 (Deckhand)".into(), err4.clone()),
            ("step_5 (Node)".into(), err5.clone()),
        ],
        topo,
    };

    // The platform API: each step's definition, fetched once at start-up; nothing else.
    let mut step_mocks = vec![
        flow.serve_step(
            "step_1",
            "comp-node",
            "stamp",
            json!({"label": "first"}),
            true,
        )
        .await,
        flow.serve_step("step_2", "comp-deckhand", "tag", json!({}), true)
            .await,
        flow.serve_step(
            "step_3",
            "comp-node",
            "stamp",
            json!({"label": "third"}),
            true,
        )
        .await,
        flow.serve_step("step_4", "comp-deckhand", "inspectError", json!({}), false)
            .await,
        flow.serve_step(
            "step_5",
            "comp-node",
            "stamp",
            json!({"label": "on-error"}),
            false,
        )
        .await,
    ];
    // Anything else (hooks, accounts, a second fetch of a step) is unexpected.
    let mut unexpected_api_calls = Vec::new();
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
        unexpected_api_calls.push(
            flow.api
                .mock(method, mockito::Matcher::Any)
                .with_status(404)
                .expect(0)
                .create_async()
                .await,
        );
    }

    flow.spawn_sailor(&dir, "step_1", &in1, &[]);
    flow.spawn_sailor(&dir, "step_3", &in3, &[]);
    flow.spawn_sailor(&dir, "step_5", &in5, &[("ELASTICIO_INPUT_FORMAT", "error")]);
    flow.start_worker("step_2", "tag", &in2, &[]).await;
    flow.start_worker(
        "step_4",
        "inspectError",
        &in4,
        &[("ELASTICIO_INPUT_FORMAT", "error")],
    )
    .await;
    flow.wait_sailors_ready().await;
    eprintln!(
        "interop v{v}: 3 Sailors and 2 Deckhand workers ready after {:.1?}",
        started.elapsed()
    );

    let thread = format!("thread-{}", uuid::Uuid::new_v4());
    let ok_id = flow
        .send("in-ok", json!({"hello": "world", "n": 1}), &thread)
        .await;
    let boom_id = flow
        .send("in-node-boom", json!({"explode": "on purpose"}), &thread)
        .await;
    flow.send(
        "in-rust-boom",
        json!({"hello": "rust", "explodeInRust": "on purpose"}),
        &thread,
    )
    .await;

    // ---- Sailor → Deckhand -------------------------------------------------------------------
    // Node's step_1 publishes with its data routing key; the topology routes it to step_2.
    let mut node1 = flow.take(&tap1, 2, Kind::Data, "step_1 (Node) data").await;
    node1.sort_by_key(|g| {
        g.body["body"]["hello"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    });
    let (node1_rust, node1_ok) = (node1.remove(0), node1.remove(0));
    assert_eq!(node1_ok.body["body"]["hello"], "world");
    assert_eq!(node1_rust.body["body"]["hello"], "rust");
    assert_eq!(node1_ok.body["body"]["stampedBy"], "node");
    assert_eq!(node1_ok.body["body"]["nodeSaw"]["id"], "in-ok");
    assert_eq!(node1_ok.body["body"]["nodeSaw"]["label"], "first");
    assert_version_header(&node1_ok, version, "step_1 (Node)");
    assert_step_headers(&node1_ok, &flow, "step_1", "comp-node", "stamp");
    assert_eq!(node1_ok.header("parentMessageId"), ok_id);
    assert_eq!(node1_ok.header("threadId"), thread);
    assert_eq!(node1_ok.header("reply_to"), reply_to);
    assert_eq!(
        node1_ok.body["body"]["nodeSaw"]["headers"]["reply_to"],
        reply_to.as_str(),
        "Sailor injects reply_to into the message headers"
    );
    let node1_message_id = node1_ok.header("messageId");
    assert_eq!(
        node1_ok.body["id"].as_str(),
        Some(node1_message_id.as_str()),
        "Sailor uses the emitted message's id as messageId"
    );

    let rust = flow
        .take_one(&tap2, Kind::Data, "step_2 (Deckhand) data")
        .await;
    let body = &rust.body["body"];
    assert_eq!(body["hello"], "world", "{body}");
    assert_eq!(body["n"], 1);
    assert_eq!(
        body["stampedBy"], "node",
        "Node's stamp reached Deckhand: {body}"
    );
    assert_eq!(body["nodeSaw"], node1_ok.body["body"]["nodeSaw"]);
    assert_eq!(body["taggedBy"], "deckhand");
    assert_eq!(
        body["deckhandSaw"]["id"].as_str(),
        Some(node1_message_id.as_str()),
        "Deckhand decrypted Node's message id"
    );
    assert_eq!(body["deckhandSaw"]["passthroughSteps"], json!(["step_1"]));
    assert_version_header(&rust, version, "step_2 (Deckhand)");
    assert_step_headers(&rust, &flow, "step_2", "comp-deckhand", "tag");
    assert_eq!(
        rust.header("parentMessageId"),
        node1_message_id,
        "parentMessageId = Node's outgoing messageId"
    );
    assert_eq!(rust.header("threadId"), thread, "threadId propagated");
    assert_eq!(rust.header("reply_to"), reply_to, "reply_to propagated");
    assert_eq!(
        body["deckhandSaw"]["headers"]["reply_to"],
        reply_to.as_str(),
        "Deckhand injects reply_to into the message headers"
    );
    assert_eq!(
        rust.header("x-eio-meta-flow-tag"),
        "interop",
        "x-eio-meta-* propagated"
    );
    let rust_message_id = rust.header("messageId");
    assert_ne!(rust_message_id, node1_message_id);
    assert_eq!(rust.body["id"].as_str(), Some(rust_message_id.as_str()));
    // Passthrough: Node's entry carried over unchanged, Deckhand's own added.
    assert_eq!(keys(&rust.body["passthrough"]), ["step_1", "step_2"]);
    assert_eq!(
        rust.body["passthrough"]["step_1"],
        node1_ok.body["passthrough"]["step_1"]
    );
    assert_eq!(rust.body["passthrough"]["step_2"]["body"], *body);

    // ---- Deckhand → Sailor -------------------------------------------------------------------
    let node3 = flow.take_one(&out3, Kind::Data, "step_3 (Node) data").await;
    let body = &node3.body["body"];
    assert_eq!(body["hello"], "world", "{body}");
    assert_eq!(
        body["taggedBy"], "deckhand",
        "Deckhand's tag reached Node: {body}"
    );
    assert_eq!(body["stampedBy"], "node");
    assert_eq!(body["nodeSaw"]["step"], "step_3");
    assert_eq!(body["nodeSaw"]["label"], "third");
    assert_eq!(
        body["nodeSaw"]["id"].as_str(),
        Some(rust_message_id.as_str()),
        "Sailor decrypted Deckhand's message id"
    );
    assert_eq!(
        body["nodeSaw"]["passthroughSteps"],
        json!(["step_1", "step_2"])
    );
    assert_eq!(body["deckhandSaw"], rust.body["body"]["deckhandSaw"]);
    assert_eq!(
        wire_shape(&node3),
        wire_shape(&rust),
        "Sailor's and Deckhand's data events carry the same header names, types and properties"
    );
    assert_eq!(wire_shape(&node1_ok), wire_shape(&rust));
    assert_version_header(&node3, version, "step_3 (Node)");
    assert_step_headers(&node3, &flow, "step_3", "comp-node", "stamp");
    assert_eq!(
        node3.header("parentMessageId"),
        rust_message_id,
        "parentMessageId = Deckhand's outgoing messageId"
    );
    assert_eq!(node3.header("threadId"), thread);
    assert_eq!(node3.header("reply_to"), reply_to);
    assert_eq!(body["nodeSaw"]["headers"]["reply_to"], reply_to.as_str());
    assert_eq!(node3.header("x-eio-meta-flow-tag"), "interop");
    assert_eq!(
        keys(&node3.body["passthrough"]),
        ["step_1", "step_2", "step_3"]
    );
    assert_eq!(
        node3.body["passthrough"]["step_2"], rust.body["passthrough"]["step_2"],
        "Sailor keeps Deckhand's passthrough entry unchanged"
    );
    assert_eq!(
        node3.body["passthrough"]["step_1"],
        node1_ok.body["passthrough"]["step_1"]
    );

    // ---- A Node error, decrypted by Deckhand (error-handler step) ----------------------------
    let envelope = flow
        .take_one(
            &tap1_err,
            Kind::ErrorEnvelope,
            "step_1 (Node) error envelope",
        )
        .await;
    let error = flow.envelope_error(&envelope.body);
    assert_eq!(error["name"], "NodeExplosion", "{error}");
    assert_eq!(error["message"], "node step step_1 exploded: on purpose");
    assert!(
        error["stack"]
            .as_str()
            .unwrap_or_default()
            .contains("stamp.js")
    );
    let input = flow.envelope_input(&envelope.body);
    assert_eq!(input["id"], "in-node-boom");
    assert_eq!(input["body"], json!({"explode": "on purpose"}));
    assert_eq!(envelope.header("parentMessageId"), boom_id);
    assert_eq!(envelope.header("stepId"), "step_1");

    let handled = flow
        .take_one(&out4, Kind::Data, "step_4 (Deckhand error handler) data")
        .await;
    let body = &handled.body["body"];
    assert_eq!(body["handledBy"], "deckhand");
    assert_eq!(
        body["error"], error,
        "Deckhand decrypted Node's error: {body}"
    );
    assert_eq!(
        body["errorInput"], input,
        "Deckhand decrypted Node's errorInput"
    );
    assert_eq!(body["sawHeaders"]["stepId"], "step_1");
    assert_eq!(body["sawHeaders"]["threadId"], thread.as_str());
    assert_eq!(
        body["sawHeaders"]["messageId"].as_str(),
        Some(envelope.header("messageId").as_str())
    );
    assert_version_header(&handled, version, "step_4 (Deckhand)");
    assert_eq!(
        handled.header("parentMessageId"),
        envelope.header("messageId")
    );
    assert_eq!(handled.header("threadId"), thread);
    assert_eq!(handled.header("stepId"), "step_4");
    let (node_envelope, deckhand_handler) = (envelope, handled);

    // ---- A Deckhand error, decrypted by Sailor (error-handler step) --------------------------
    let envelope = flow
        .take_one(
            &tap2_err,
            Kind::ErrorEnvelope,
            "step_2 (Deckhand) error envelope",
        )
        .await;
    let error = flow.envelope_error(&envelope.body);
    assert_eq!(error["name"], "DeckhandExplosion", "{error}");
    assert_eq!(error["message"], "deckhand step exploded: on purpose");
    let input = flow.envelope_input(&envelope.body);
    assert_eq!(
        input, node1_rust.body,
        "errorInput = Node's message to Deckhand"
    );
    assert_eq!(envelope.header("stepId"), "step_2");
    assert_eq!(
        envelope.header("parentMessageId"),
        node1_rust.header("messageId")
    );

    let handled = flow
        .take_one(&out5, Kind::Data, "step_5 (Node error handler) data")
        .await;
    let body = &handled.body["body"];
    assert_eq!(body["stampedBy"], "node");
    assert_eq!(
        body["error"], error,
        "Sailor decrypted Deckhand's error: {body}"
    );
    assert_eq!(
        body["errorInput"], input,
        "Sailor decrypted Deckhand's errorInput"
    );
    // Sailor hands an error handler the AMQP headers of the envelope as message headers.
    let saw = &body["nodeSaw"]["headers"];
    assert_eq!(saw["stepId"], "step_2", "{saw}");
    assert_eq!(saw["threadId"], thread.as_str());
    assert_eq!(
        saw["messageId"].as_str(),
        Some(envelope.header("messageId").as_str())
    );
    assert!(saw["start"].is_number() && saw["end"].is_number(), "{saw}");
    assert_version_header(&handled, version, "step_5 (Node)");
    assert_eq!(
        handled.header("parentMessageId"),
        envelope.header("messageId")
    );
    assert_eq!(handled.header("threadId"), thread);
    assert_eq!(
        wire_shape(&handled),
        wire_shape(&deckhand_handler),
        "Sailor's and Deckhand's error handlers publish the same header names, types and properties"
    );
    assert_eq!(
        wire_shape(&envelope),
        wire_shape(&node_envelope),
        "Sailor's and Deckhand's error envelopes carry the same header names, types and properties"
    );
    assert_eq!(
        keys(&envelope.body),
        keys(&node_envelope.body),
        "envelope fields"
    );
    assert_eq!(
        keys(&error),
        ["message", "name", "stack"],
        "the error's fields"
    );

    // ---- Request-reply: both errors were also sent to `reply_to` ------------------------------
    let mut error_replies = flow
        .take(&replies, 2, Kind::Raw, "error replies to reply_to")
        .await;
    error_replies.sort_by_key(|g| g.header("stepId"));
    let (node_reply, deckhand_reply) = (&error_replies[0], &error_replies[1]);
    assert_eq!(node_reply.header("stepId"), "step_1");
    assert_eq!(deckhand_reply.header("stepId"), "step_2");
    for (reply, envelope) in [(node_reply, &node_envelope), (deckhand_reply, &envelope)] {
        assert_eq!(
            reply.headers.inner().get("x-eio-error-response"),
            Some(&AMQPValue::Boolean(true))
        );
        assert_eq!(
            String::from_utf8_lossy(&reply.raw),
            envelope.body["error"].as_str().unwrap(),
            "the reply is the envelope's base64 error"
        );
        assert_eq!(reply.header("messageId"), envelope.header("messageId"));
    }
    assert_eq!(
        wire_shape(node_reply),
        wire_shape(deckhand_reply),
        "Sailor's and Deckhand's error replies carry the same header names, types and properties"
    );

    // ---- Shut down; then every input was acked, except the two that failed -------------------
    let mut exits = Vec::new();
    for sailor in std::mem::take(&mut flow.sailors) {
        exits.push(sailor.stop().await);
    }
    for (step, stop, handle) in std::mem::take(&mut flow.workers) {
        let _ = stop.send(());
        let code = tokio::time::timeout(Duration::from_secs(30), handle)
            .await
            .unwrap_or_else(|_| panic!("the Deckhand worker {step} did not stop"))
            .expect("worker task");
        assert_eq!(code, 0, "Deckhand worker {step} exit code");
    }
    for (step, status, log) in &exits {
        assert!(
            status.success(),
            "Sailor {step} did not shut down cleanly on SIGTERM ({status}); log:\n{log}"
        );
    }
    for (queue, step) in [
        (&in1, "step_1"),
        (&in2, "step_2"),
        (&in3, "step_3"),
        (&in4, "step_4"),
        (&in5, "step_5"),
    ] {
        assert_eq!(
            flow.topo.ready(queue).await,
            0,
            "{step}'s input queue is empty after shutdown: every message was settled"
        );
    }
    // Rejected without requeue: Sailor's failed input and Deckhand's failed input.
    let rejected = flow.take_one(&dead1, Kind::Raw, "step_1 dead letter").await;
    let original: Value = flow
        .cipher
        .decrypt_json(&rejected.raw, version)
        .expect("the rejected input is the original ciphertext");
    assert_eq!(original["id"], "in-node-boom");
    let rejected = flow.take(&dead2, 1, Kind::Data, "step_2 dead letter").await;
    assert_eq!(rejected[0].body, node1_rust.body);
    for (queue, what) in [
        (&dead1, "step_1 dead letters"),
        (&dead2, "step_2 dead letters"),
        (&dead3, "step_3 dead letters"),
        (&dead4, "step_4 dead letters"),
        (&dead5, "step_5 dead letters"),
        (&tap1, "step_1 data"),
        (&tap1_err, "step_1 errors"),
        (&tap2, "step_2 data"),
        (&tap2_err, "step_2 errors"),
        (&out3, "step_3 data"),
        (&out4, "step_4 data"),
        (&out5, "step_5 data"),
        (&replies, "replies"),
    ] {
        assert_eq!(flow.topo.ready(queue).await, 0, "nothing more in {what}");
    }
    for (what, queue) in flow.watched_errors.clone() {
        if flow.topo.ready(&queue).await > 0 {
            let report = flow.report().await;
            panic!("{what} published an error:{report}");
        }
    }
    for mock in &mut step_mocks {
        mock.assert_async().await;
    }
    for mock in &unexpected_api_calls {
        mock.assert_async().await;
    }

    flow.topo.cleanup().await;
    eprintln!("interop v{v}: passed in {:.1?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sailor_and_deckhand_interoperate_with_protocol_v1() {
    sailor_and_deckhand_interoperate(ProtocolVersion::V1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sailor_and_deckhand_interoperate_with_protocol_v2() {
    sailor_and_deckhand_interoperate(ProtocolVersion::V2).await;
}

// ---------------------------------------------------------------------------------------------
// The official runtime's updateKeys against Deckhand's platform service
// ---------------------------------------------------------------------------------------------

/// The official Sailor loads its step from `deckhand-platform`'s API and its component emits
/// `updateKeys`, which Sailor sends as `PUT /v1/accounts/{id}` (no lineage): every update lands
/// through the platform's fencing — applied last-write-wins and counted as unfenced, a replay
/// of older keys dropped as stale, the same keys twice a no-op.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sailor_update_keys_land_through_the_platforms_fencing() {
    use deckhand_platform::api::{ApiOptions, serve};
    use deckhand_platform::{CryptoSettings, Platform, StepDefinition};

    init_tracing();
    let dir = sailor_install().await;
    let schema = deckhand_tests::postgres::TestSchema::new().await;
    let platform = Platform::connect(&schema.url, schema.keys(), &schema.schema, None)
        .await
        .expect("the platform connects");
    let keys =
        |rt: &str| json!({"oauth": {"refresh_token": rt, "access_token": format!("at-{rt}")}});
    platform
        .create_account("acc-node", keys("node-rt0"))
        .await
        .unwrap();
    let mut topo = Topology::new().await;
    let flow_id = format!("flow-{}", topo.id);
    platform
        .put_step(
            &flow_id,
            "step_1",
            StepDefinition {
                function: Some("rotateKeys".into()),
                comp_id: Some("comp-node".into()),
                account_id: Some("acc-node".into()),
                crypto: Some(CryptoSettings {
                    password: PASSWORD.into(),
                    iv: IV.into(),
                }),
                ..StepDefinition::default()
            },
        )
        .await
        .unwrap();
    let api_key = platform.create_api_user("node-task").await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_uri = format!("http://{}", listener.local_addr().unwrap());
    let (stop_api, api_stopped) = oneshot::channel::<()>();
    tokio::spawn(serve(
        listener,
        platform.clone(),
        ApiOptions::default(),
        async {
            let _ = api_stopped.await;
        },
    ));

    let (input, _dead) = topo.step_queue("step_1", topo.rk("step_1", "input")).await;
    let out = topo.queue("out", topo.rk("step_1", "message")).await;
    let errors = topo.queue("errors", topo.rk("step_1", "error")).await;
    let rk = |kind: &str| topo.rk("step_1", kind);
    let vars: Vec<(String, String)> = [
        ("FLOW_ID", flow_id.clone()),
        ("EXEC_ID", format!("exec-{}", topo.id)),
        ("STEP_ID", "step_1".to_owned()),
        ("CONTAINER_ID", "container-node".to_owned()),
        ("WORKSPACE_ID", "workspace-interop".to_owned()),
        ("USER_ID", "user-interop".to_owned()),
        ("COMP_ID", "comp-node".to_owned()),
        ("FUNCTION", "rotateKeys".to_owned()),
        ("API_URI", api_uri.clone()),
        ("API_USERNAME", "node-task".to_owned()),
        ("API_KEY", api_key.clone()),
        ("AMQP_URI", amqp_uri()),
        ("LISTEN_MESSAGES_ON", input),
        ("PUBLISH_MESSAGES_TO", topo.exchange.clone()),
        ("DATA_ROUTING_KEY", rk("message")),
        ("ERROR_ROUTING_KEY", rk("error")),
        ("REBOUND_ROUTING_KEY", rk("rebound")),
        ("SNAPSHOT_ROUTING_KEY", rk("snapshot")),
        ("MESSAGE_CRYPTO_PASSWORD", PASSWORD.to_owned()),
        ("MESSAGE_CRYPTO_IV", IV.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (format!("ELASTICIO_{k}"), v))
    .collect();
    let sailor = Sailor::spawn(&dir, "step_1", vars);
    let deadline = Instant::now() + HOP;
    while !sailor.logged("Fully initialized and waiting for messages") {
        assert!(
            Instant::now() < deadline,
            "Sailor did not start:\n{}",
            sailor.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let cipher = MessageCipher::new(PASSWORD, IV).unwrap();
    let outcome = async |rt: &str, n: u32| -> (u64, u64, u64, u64) {
        let id = format!("msg-{n}");
        let message = json!({"id": id, "body": {"keys": keys(rt)}, "attachments": {}, "headers": {}, "metadata": {}});
        let mut headers = FieldTable::default();
        headers.insert("messageId".into(), js_string(id));
        topo.publish(
            &topo.rk("step_1", "input"),
            &cipher.encrypt_json(&message, ProtocolVersion::V1),
            BasicProperties::default().with_headers(headers),
        )
        .await;
        // Each input is processed (data out) after its PUT; then the platform's counters.
        let deadline = Instant::now() + HOP;
        while topo.ready(&out).await < n {
            assert_eq!(
                topo.ready(&errors).await,
                0,
                "Sailor emitted an error:\n{}",
                sailor.log_text()
            );
            assert!(
                Instant::now() < deadline,
                "no output for {rt}:\n{}",
                sailor.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let status = platform.status().await.unwrap();
        let a = &status.accounts[0];
        (
            a.generation as u64,
            a.updates_unfenced as u64,
            a.updates_stale as u64,
            a.updates_duplicate as u64,
        )
    };
    // (generation, applied last-write-wins, stale, duplicate) after each input.
    assert_eq!(outcome("node-rt1", 1).await, (1, 1, 0, 0));
    assert_eq!(outcome("node-rt2", 2).await, (2, 2, 0, 0));
    assert_eq!(
        outcome("node-rt1", 3).await,
        (2, 2, 1, 0),
        "a replay never moves it back"
    );
    assert_eq!(
        outcome("node-rt2", 4).await,
        (2, 2, 1, 1),
        "the same keys twice: a no-op"
    );
    let step = platform.step_for_worker(&flow_id, "step_1").await.unwrap();
    assert_eq!(step["config"]["oauth"]["refresh_token"], "node-rt2");

    let (_, status, log) = sailor.stop().await;
    assert!(status.success(), "Sailor exited with {status}:\n{log}");
    let _ = stop_api.send(());
    topo.cleanup().await;
    schema.cleanup().await;
}
