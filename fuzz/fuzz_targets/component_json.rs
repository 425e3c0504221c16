//! component.json validation: any text, as `deckhand validate` reads a descriptor. Must never
//! panic; every finding must point into the input.
#![no_main]

use std::path::Path;

use deckhand::component::{Options, validate_str};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let report = validate_str(text, Path::new("component.json"), &Options::default());
    let _ = report.has_errors();
    let _ = format!("{report:?}");
});
