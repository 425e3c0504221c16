//! The rotation torture test (see `deckhand_tests::torture`): 500 random cases against the
//! emulator's strict single-use rotation. `DECKHAND_TORTURE_CASES` and
//! `DECKHAND_TORTURE_SEED` override the count and fix the seed.

#[test]
fn rotated_refresh_tokens_are_never_lost_under_random_faults() {
    let cases = std::env::var("DECKHAND_TORTURE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let seed = std::env::var("DECKHAND_TORTURE_SEED")
        .ok()
        .and_then(|v| v.parse().ok());
    match deckhand_tests::torture::run(cases, seed) {
        Ok(report) => {
            println!("{report:#?}");
            assert_eq!(report.cases, u64::from(cases));
            // The faults must actually bite: some cases end each way.
            assert!(report.healthy > 0, "{report:#?}");
            assert!(report.rotation_lost > 0, "{report:#?}");
        }
        Err(violation) => panic!("{violation}"),
    }
}
