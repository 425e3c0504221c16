//! The Salesforce connector binary: `validate`, `verify`, `exec`, `run` (see `deckhand::cli`).
//!
//! The connected app comes from `OAUTH_CLIENT_ID` and `OAUTH_CLIENT_SECRET`.

use std::process::ExitCode;

use deckhand_salesforce::Salesforce;

fn main() -> ExitCode {
    deckhand::main(Salesforce::from_env(), include_str!("../component.json"))
}
