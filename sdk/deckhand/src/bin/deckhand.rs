//! `deckhand`: command-line tools for Deckhand components.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use deckhand::component::cli::ValidateArgs;

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
    }
}
