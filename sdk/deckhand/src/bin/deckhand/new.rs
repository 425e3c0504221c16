//! `deckhand new NAME`: scaffolds a connector crate — `Cargo.toml`, `component.json`, a
//! `src/main.rs` with one action on the typed router, a mockito test and a README — for one of
//! four credential kinds.
//!
//! The templates are files under `templates/new/` (embedded with `include_str!`): the shared
//! ones at the top, and per kind a `main.rs`, a `tests.rs`, the `credentials` section of
//! component.json and the README's credentials paragraph. Placeholders are `{{name}}` for the
//! keys of [`Vars`]; they are replaced in one pass, so a value is never scanned again (the
//! OAuth2 section's own `{{clientId}}` is the platform's placeholder and stays as it is).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use clap::ValueEnum;

/// The SDK checkout this `deckhand` was built from: the default `--sdk-path`.
pub const DEFAULT_SDK_PATH: &str = env!("CARGO_MANIFEST_DIR");

/// A file of `templates/new/`, embedded.
macro_rules! template {
    ($($path:expr),+) => {
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/templates/new/", $($path),+))
    };
}

/// How the generated connector's credential authenticates to its API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AuthKind {
    /// No authentication: the credential holds only the API's address.
    None,
    /// An API key (a password field), sent in a header with every request.
    ApiKey,
    /// OAuth2 with the refresh token grant: a user signs in, the SDK refreshes and persists
    /// rotated tokens.
    Oauth2Refresh,
    /// OAuth2 with the client credentials grant (app-only, no user).
    ClientCredentials,
}

impl AuthKind {
    /// The kind's templates: `src/main.rs`, `src/tests.rs`, the component.json `credentials`
    /// section, the README's credentials paragraph.
    fn templates(self) -> [&'static str; 4] {
        macro_rules! kind {
            ($dir:literal) => {
                [
                    template!($dir, "/main.rs"),
                    template!($dir, "/tests.rs"),
                    template!($dir, "/credentials.json"),
                    template!($dir, "/README.part.md"),
                ]
            };
        }
        match self {
            AuthKind::None => kind!("none"),
            AuthKind::ApiKey => kind!("api-key"),
            AuthKind::Oauth2Refresh => kind!("oauth2-refresh"),
            AuthKind::ClientCredentials => kind!("client-credentials"),
        }
    }

    fn summary(self) -> &'static str {
        match self {
            AuthKind::None => "no authentication",
            AuthKind::ApiKey => "authenticated with an API key",
            AuthKind::Oauth2Refresh => {
                "authenticated with OAuth2 access tokens from the refresh token grant"
            }
            AuthKind::ClientCredentials => {
                "authenticated with OAuth2 access tokens from the client credentials grant"
            }
        }
    }
}

impl fmt::Display for AuthKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = self
            .to_possible_value()
            .expect("no AuthKind variant is skipped");
        f.write_str(value.get_name())
    }
}

/// `deckhand new`'s arguments.
#[derive(Debug, clap::Args)]
pub struct NewArgs {
    /// The crate's name (also the binary's): letters, digits, `-` and `_`, starting with a
    /// letter.
    pub name: String,
    /// Directory to create the crate in (default: ./NAME). It must not exist or be empty.
    #[arg(long, value_name = "DIR")]
    pub path: Option<PathBuf>,
    /// How the connector's credential authenticates to its API.
    #[arg(long, value_enum, default_value_t = AuthKind::Oauth2Refresh)]
    pub auth: AuthKind,
    /// The Deckhand SDK (the directory of the `deckhand` crate) that the generated crate
    /// depends on by path. Default: the checkout this `deckhand` was built from.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_SDK_PATH)]
    pub sdk_path: PathBuf,
}

/// Why `deckhand new` did not generate a crate.
#[derive(Debug, thiserror::Error)]
pub enum NewError {
    /// NAME cannot be a crate name.
    #[error("`{name}` is not a valid crate name: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The target directory has files in it.
    #[error(
        "{} already exists and is not empty; choose another NAME or --path, or remove it",
        .0.display()
    )]
    NotEmpty(PathBuf),
    /// The target exists and is a file.
    #[error("{} already exists and is not a directory", .0.display())]
    NotADirectory(PathBuf),
    /// `--sdk-path` is not the `deckhand` crate.
    #[error(
        "{} is not the Deckhand SDK (no Cargo.toml of the `deckhand` package there); pass \
         --sdk-path with the sdk/deckhand directory of a Deckhand checkout",
        .0.display()
    )]
    NoSdk(PathBuf),
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> NewError + '_ {
    move |source| NewError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What was generated, for the message after it.
#[derive(Debug)]
pub struct Generated {
    /// The crate's directory.
    pub dir: PathBuf,
    /// The files written, relative to `dir`.
    pub files: Vec<&'static str>,
}

/// Generates the crate `args.name` in `args.path` (default `./NAME`).
pub fn generate(args: &NewArgs) -> Result<Generated, NewError> {
    validate_name(&args.name)?;
    let sdk_path = sdk_path(&args.sdk_path)?;
    let dir = args
        .path
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    ensure_empty(&dir)?;

    let [main_rs, tests_rs, credentials, credentials_readme] = args.auth.templates();
    let sdk_dir = sdk_path;
    let sdk_path = sdk_dir.to_string_lossy();
    let vars = Vars(vec![
        ("name", args.name.clone()),
        ("title", title(&args.name)),
        ("auth", args.auth.to_string()),
        ("auth_summary", args.auth.summary().to_owned()),
        // Quoted in TOML, as a path in the README: `\` and `"` escaped for TOML.
        (
            "sdk_path",
            sdk_path.replace('\\', "\\\\").replace('"', "\\\""),
        ),
        ("credentials", credentials.trim_end().to_owned()),
        ("credentials_readme", credentials_readme.to_owned()),
    ]);
    let files: [(&'static str, &str); 6] = [
        ("Cargo.toml", template!("Cargo.toml")),
        (".gitignore", template!("gitignore")),
        ("component.json", template!("component.json")),
        ("README.md", template!("README.md")),
        ("src/main.rs", main_rs),
        ("src/tests.rs", tests_rs),
    ];
    let src = dir.join("src");
    std::fs::create_dir_all(&src).map_err(io_error(&src))?;
    let mut written: Vec<&'static str> = Vec::new();
    for (file, template) in files {
        let path = dir.join(file);
        std::fs::write(&path, vars.render(template)).map_err(io_error(&path))?;
        written.push(file);
    }
    // The SDK workspace's lock file: the first build uses the versions the SDK was tested
    // with (Cargo drops the entries the crate does not need).
    if let Some(lock) = sdk_dir
        .ancestors()
        .map(|d| d.join("Cargo.lock"))
        .find(|l| l.is_file())
    {
        let path = dir.join("Cargo.lock");
        std::fs::copy(&lock, &path).map_err(io_error(&path))?;
        written.push("Cargo.lock");
    }
    Ok(Generated {
        dir,
        files: written,
    })
}

/// Placeholder values: `{{key}}` → value.
struct Vars(Vec<(&'static str, String)>);

impl Vars {
    /// `template` with every `{{key}}` of a known key replaced, in one pass; other `{{…}}`
    /// stay as they are.
    fn render(&self, template: &str) -> String {
        let mut out = String::with_capacity(template.len());
        let mut rest = template;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let value = after.find("}}").and_then(|end| {
                let key = &after[..end];
                self.0
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| (v, end))
            });
            match value {
                Some((value, end)) => {
                    out.push_str(value);
                    rest = &after[end + 2..];
                }
                None => {
                    out.push_str("{{");
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        out
    }
}

/// Names a crate must not take: Rust keywords (the binary's crate name is an identifier),
/// names Cargo reserves, and the generated crate's own dependencies.
const RESERVED: &str = "abstract as async await become box break const continue crate do dyn \
    else enum extern false final fn for gen if impl in let loop macro match mod move mut \
    override priv pub ref return self static struct super trait true try type typeof unsafe \
    unsized use virtual where while yield alloc core std proc_macro proc-macro test build deps \
    examples incremental deckhand async-trait async_trait serde serde_json url mockito tokio";

/// Windows device names, which Cargo refuses as package names.
const WINDOWS_DEVICES: &str = "con prn aux nul com1 com2 com3 com4 com5 com6 com7 com8 com9 \
    lpt1 lpt2 lpt3 lpt4 lpt5 lpt6 lpt7 lpt8 lpt9";

/// Checks `name` against Cargo's rules for a package that has a binary.
pub fn validate_name(name: &str) -> Result<(), NewError> {
    let invalid = |reason: &str| NewError::InvalidName {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    let Some(first) = name.chars().next() else {
        return Err(invalid("it is empty"));
    };
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(NewError::InvalidName {
            name: name.to_owned(),
            reason: format!(
                "`{}` is not allowed (use ASCII letters, digits, `-` and `_`)",
                c.escape_default()
            ),
        });
    }
    if !first.is_ascii_alphabetic() {
        return Err(invalid("it must start with an ASCII letter"));
    }
    if name.len() > 64 {
        return Err(invalid("it is longer than 64 characters"));
    }
    let lower = name.to_ascii_lowercase();
    if RESERVED.split_whitespace().any(|r| r == lower) {
        return Err(invalid(
            "it is a Rust keyword, a name Cargo reserves, or a dependency of the generated crate",
        ));
    }
    if WINDOWS_DEVICES.split_whitespace().any(|r| r == lower) {
        return Err(invalid("it is a Windows device name"));
    }
    Ok(())
}

/// The SDK's directory, absolute (the generated Cargo.toml lives elsewhere).
fn sdk_path(path: &Path) -> Result<PathBuf, NewError> {
    let manifest = path.join("Cargo.toml");
    let is_sdk = std::fs::read_to_string(&manifest)
        .is_ok_and(|text| text.lines().any(|l| l.trim() == r#"name = "deckhand""#));
    if !is_sdk {
        return Err(NewError::NoSdk(path.to_path_buf()));
    }
    std::fs::canonicalize(path).map_err(io_error(path))
}

/// Refuses a directory with anything in it (and a file in the way).
fn ensure_empty(dir: &Path) -> Result<(), NewError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => Err(NewError::NotEmpty(dir.to_path_buf())),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
            Err(NewError::NotADirectory(dir.to_path_buf()))
        }
        Err(e) => Err(NewError::Io {
            path: dir.to_path_buf(),
            source: e,
        }),
    }
}

/// `acme-crm` → `Acme crm`: the component's title until its author picks one.
fn title(name: &str) -> String {
    let words = name.replace(['-', '_'], " ");
    let mut chars = words.trim().chars();
    match chars.next() {
        Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_replaced_once_and_unknown_ones_kept() {
        let vars = Vars(vec![
            ("name", "acme".into()),
            ("credentials", "{{clientId}} {{name}}".into()),
        ]);
        assert_eq!(
            vars.render("[{{name}}] {{credentials}} {{other}} {{"),
            "[acme] {{clientId}} {{name}} {{other}} {{"
        );
    }

    #[test]
    fn names_follow_cargos_rules_with_a_reason() {
        for ok in ["acme", "acme-crm", "Acme_CRM2"] {
            validate_name(ok).unwrap();
        }
        for (bad, reason) in [
            ("", "empty"),
            ("2fa", "start with an ASCII letter"),
            ("-x", "start with an ASCII letter"),
            ("acme crm", "` ` is not allowed"),
            ("acmé", "is not allowed"),
            ("fn", "keyword"),
            ("deckhand", "dependency"),
            ("test", "reserves"),
            ("nul", "Windows"),
        ] {
            let error = validate_name(bad).expect_err(bad).to_string();
            assert!(error.contains(reason), "{bad}: {error}");
            assert!(error.contains(&format!("`{bad}`")), "{bad}: {error}");
        }
        let long = "a".repeat(65);
        assert!(validate_name(&long).is_err());
    }

    #[test]
    fn titles_come_from_the_name() {
        assert_eq!(title("acme-crm"), "Acme crm");
        assert_eq!(title("x"), "X");
    }
}
