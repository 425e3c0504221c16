//! The connector binary: `validate`, `verify`, `exec`, `run` (see `deckhand::cli`).

use std::process::ExitCode;

use deckhand_msgraph::MsGraph;

fn main() -> ExitCode {
    deckhand::main(MsGraph::default(), include_str!("../component.json"))
}
