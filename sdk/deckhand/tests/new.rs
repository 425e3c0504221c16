//! `deckhand new`: what it generates for every credential kind passes `deckhand validate`, and
//! builds, tests, lints and formats cleanly against this workspace's SDK exactly as generated.
//!
//! The cargo runs share the workspace's target directory (see [`Builds`]). Each generated crate
//! comes with the workspace's Cargo.lock (`deckhand new` copies the SDK's) and cargo runs
//! `--offline`: the same versions as the workspace, nothing resolved or downloaded.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Instant;

use serde_json::Value;

const KINDS: [&str; 4] = ["none", "api-key", "oauth2-refresh", "client-credentials"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn deckhand(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_deckhand"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run deckhand")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `deckhand new NAME --auth KIND` in `parent`; the crate's directory.
fn generate(parent: &Path, name: &str, kind: &str) -> PathBuf {
    let output = deckhand(&["new", name, "--auth", kind], parent);
    assert!(
        output.status.success(),
        "deckhand new {name} --auth {kind}: {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
    parent.join(name)
}

#[test]
fn every_kind_generates_a_crate_that_validates_without_warnings() {
    let parent = tempfile::tempdir().unwrap();
    for kind in KINDS {
        let name = format!("acme-{kind}");
        let dir = generate(parent.path(), &name, kind);
        for file in [
            "Cargo.toml",
            ".gitignore",
            "component.json",
            "README.md",
            "src/main.rs",
            "src/tests.rs",
        ] {
            let content = std::fs::read_to_string(dir.join(file))
                .unwrap_or_else(|e| panic!("{kind}: {file}: {e}"));
            // Every placeholder of ours was filled (component.json's OAuth2 section keeps the
            // platform's own `{{clientId}}`-style ones).
            for placeholder in ["{{name}}", "{{title}}", "{{sdk_path}}", "{{credentials"] {
                assert!(!content.contains(placeholder), "{kind}: {file}: {content}");
            }
        }

        let output = deckhand(
            &["validate", "--deny-warnings", dir.to_str().unwrap()],
            parent.path(),
        );
        assert!(
            output.status.success(),
            "{kind}: deckhand validate: {}{}",
            text(&output.stdout),
            text(&output.stderr)
        );

        let component: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("component.json")).unwrap())
                .unwrap();
        assert_eq!(
            component["title"],
            format!("Acme {}", kind.replace('-', " "))
        );
        let fields = component["credentials"]["fields"].as_object().unwrap();
        let views: Vec<(&str, &str)> = fields
            .iter()
            .map(|(name, field)| (name.as_str(), field["viewClass"].as_str().unwrap()))
            .collect();
        let expected: &[(&str, &str)] = match kind {
            "none" => &[("apiBase", "TextFieldView")],
            "api-key" => &[
                ("apiBase", "TextFieldView"),
                ("apiKey", "PasswordFieldView"),
            ],
            "oauth2-refresh" => &[
                ("apiBase", "TextFieldView"),
                ("tokenUrl", "TextFieldView"),
                ("clientId", "TextFieldView"),
                ("clientSecret", "PasswordFieldView"),
                ("oauth", "OAuthFieldView"),
            ],
            _ => &[
                ("apiBase", "TextFieldView"),
                ("tokenUrl", "TextFieldView"),
                ("clientId", "TextFieldView"),
                ("clientSecret", "PasswordFieldView"),
                ("scope", "TextFieldView"),
            ],
        };
        assert_eq!(views, expected, "{kind}");
        // Only a sign-in needs the platform's OAuth2 app.
        assert_eq!(
            component["credentials"].get("oauth2").is_some(),
            kind == "oauth2-refresh",
            "{kind}"
        );

        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "{manifest}"
        );
        let sdk = std::fs::canonicalize(env!("CARGO_MANIFEST_DIR")).unwrap();
        assert!(
            manifest.contains(&format!("path = \"{}\"", sdk.display())),
            "{manifest}"
        );
    }
}

#[test]
fn an_existing_directory_with_files_is_never_overwritten() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("acme");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("notes.txt"), "mine").unwrap();

    let output = deckhand(&["new", "acme"], parent.path());

    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("already exists and is not empty"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("notes.txt")).unwrap(),
        "mine"
    );
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);

    // An empty directory is fine, and --path names it.
    let empty = parent.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let output = deckhand(
        &["new", "acme", "--path", empty.to_str().unwrap()],
        parent.path(),
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(empty.join("src/main.rs").is_file());
}

#[test]
fn invalid_names_and_sdk_paths_are_refused_with_the_reason() {
    let parent = tempfile::tempdir().unwrap();
    for (args, expected) in [
        (&["new", "2fa"][..], "`2fa` is not a valid crate name"),
        (&["new", "my connector"][..], "` ` is not allowed"),
        (
            &["new", "deckhand"][..],
            "dependency of the generated crate",
        ),
        (
            &["new", "acme", "--sdk-path", "/nonexistent"][..],
            "/nonexistent is not the Deckhand SDK",
        ),
        (
            &["new", "acme", "--auth", "basic"][..],
            "invalid value 'basic'",
        ),
    ] {
        let output = deckhand(args, parent.path());
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = text(&output.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    assert_eq!(
        std::fs::read_dir(parent.path()).unwrap().count(),
        0,
        "nothing was written"
    );
}

/// Where the generated crates are built.
///
/// First the workspace's own target directory: the generated crates then reuse the workspace's
/// build of every third-party dependency (the `debug` setting of the root Cargo.toml is passed
/// along so that the builds match), and only the SDK's crates and the generated crate are
/// compiled — about a minute, where a target directory of their own costs a complete build of
/// the dependency tree. Cargo releases the directory's lock once the outer `cargo test` has
/// built the tests; should a cargo keep it while tests run (or another build hold it), the
/// nested cargo says it is blocked, and the runs move to `target/scaffold-check`, kept between
/// runs.
struct Builds {
    target: PathBuf,
    fallback: Option<PathBuf>,
}

impl Builds {
    fn new() -> Self {
        // `<target>/debug/deckhand`: the target directory this test was built in.
        let target = Path::new(env!("CARGO_BIN_EXE_deckhand"))
            .ancestors()
            .nth(2)
            .expect("the deckhand binary is in <target>/<profile>/")
            .to_path_buf();
        let fallback = Some(target.join("scaffold-check"));
        Self { target, fallback }
    }

    /// Runs `cargo ARGS` in `dir`; panics with cargo's output when it fails. Returns the
    /// seconds it took.
    fn cargo(&mut self, dir: &Path, args: &[&str]) -> f64 {
        loop {
            match run_cargo(dir, &self.target, args) {
                Some(seconds) => return seconds,
                None => {
                    let fallback = self.fallback.take().unwrap_or_else(|| {
                        panic!(
                            "`cargo {}` is blocked on {}",
                            args.join(" "),
                            self.target.display()
                        )
                    });
                    eprintln!(
                        "{} is locked; building in {} instead",
                        self.target.display(),
                        fallback.display()
                    );
                    self.target = fallback;
                }
            }
        }
    }
}

/// `cargo ARGS` in `dir` with `target` as its target directory: `Some(seconds)` when it
/// succeeded, `None` when it was blocked waiting for the directory's lock (and was stopped).
fn run_cargo(dir: &Path, target: &Path, args: &[&str]) -> Option<f64> {
    let started = Instant::now();
    let mut command = Command::new("cargo");
    command
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target)
        .env("CARGO_INCREMENTAL", "0")
        // The workspace's own setting (root Cargo.toml), so that its artifacts are reused.
        .env("CARGO_PROFILE_DEV_DEBUG", "line-tables-only")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // A group of its own, so that stopping it stops what it started too (rustup's proxy
    // starts the real cargo).
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command.spawn().expect("run cargo");
    let mut stdout = child.stdout.take().expect("piped");
    let stdout = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let mut stderr = String::new();
    let mut blocked = false;
    for line in BufReader::new(child.stderr.take().expect("piped")).lines() {
        let line = line.unwrap_or_default();
        if line.contains("Blocking waiting for file lock") && !line.contains("package cache") {
            blocked = true;
            stop(&mut child);
            break;
        }
        stderr.push_str(&line);
        stderr.push('\n');
    }
    let status = child.wait().expect("wait for cargo");
    if blocked {
        return None;
    }
    let stdout = stdout.join().unwrap_or_default();
    assert!(
        status.success(),
        "`cargo {}` failed in {} ({status}):\nstderr:\n{stderr}\nstdout:\n{stdout}",
        args.join(" "),
        dir.display(),
    );
    Some(started.elapsed().as_secs_f64())
}

/// Stops `child` and, on Unix, its process group.
fn stop(child: &mut Child) {
    #[cfg(unix)]
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .status();
    let _ = child.kill();
}

#[test]
fn generated_crates_pass_cargo_test_clippy_and_fmt_against_the_workspace_sdk() {
    let parent = tempfile::tempdir().unwrap();
    let lock = workspace().join("Cargo.lock");
    let mut builds = Builds::new();
    for kind in KINDS {
        let dir = generate(parent.path(), &format!("acme-{kind}"), kind);
        // `deckhand new` copied the workspace's lock file: the same versions, nothing to resolve.
        assert_eq!(
            std::fs::read(dir.join("Cargo.lock")).unwrap(),
            std::fs::read(&lock).unwrap()
        );
        let times = [
            ("fmt", builds.cargo(&dir, &["fmt", "--check"])),
            (
                "clippy",
                builds.cargo(
                    &dir,
                    &[
                        "clippy",
                        "--offline",
                        "--all-targets",
                        "--",
                        "-D",
                        "warnings",
                    ],
                ),
            ),
            // The generated tests include the router's cross-check against component.json.
            ("test", builds.cargo(&dir, &["test", "--offline"])),
        ];
        eprintln!("{kind}: {times:.1?} (seconds)");
        if kind == "oauth2-refresh" {
            // The binary itself, once: without the dev-dependencies' `testing` feature the SDK
            // crates are built a second time, so not for every kind.
            let validate = builds.cargo(&dir, &["run", "--offline", "--", "validate"]);
            eprintln!("{kind}: cargo run -- validate {validate:.1} s");
        }
    }
}
