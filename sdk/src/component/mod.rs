//! The `component.json` schema and validator.
