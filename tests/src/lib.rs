//! Cross-crate integration tests for Deckhand live in `tests/tests/`.
