//! `deckhand`: command-line tools for Deckhand components.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use deckhand::component::cli::ValidateArgs;

mod new;

#[derive(Debug, Parser)]
#[command(
    name = "deckhand",
    version,
    about = "Tools for elastic.io-style components built with Deckhand"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate component.json files or component directories.
    ///
    /// Exit status: 0 when no errors were found (warnings allowed unless --deny-warnings),
    /// 1 when a descriptor has errors (or warnings, with --deny-warnings), 2 when a path could
    /// not be read. Every rule, its code and its fix: component-schemas/RULES.md.
    Validate(ValidateArgs),
    /// Create a connector crate: Cargo.toml, component.json, src/main.rs with one action
    /// (`getItem`), a mockito test and a README with the commands to validate, test and run it.
    ///
    /// The crate depends on the SDK by path (--sdk-path). Exit status: 0 when the crate was
    /// written, 2 when it was not (invalid NAME, a non-empty directory, no SDK at --sdk-path).
    New(new::NewArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // --help and --version are "errors" to clap but successes to the user.
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::Validate(args) => args
            .run(&mut std::io::stdout().lock(), &mut std::io::stderr().lock())
            .into(),
        Command::New(args) => match new::generate(&args) {
            Ok(generated) => {
                println!(
                    "Created connector `{}` ({}) in {}:",
                    args.name,
                    args.auth,
                    generated.dir.display()
                );
                for file in &generated.files {
                    println!("  {file}");
                }
                println!(
                    "Next: cd {} && cargo test; README.md has the commands to validate and run it.",
                    generated.dir.display()
                );
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::from(2)
            }
        },
    }
}
