//! The validator never panics, whatever the bytes, and its positions stay truthful.

use std::path::{Path, PathBuf};

use deckhand::component::{Options, Report, validate_bytes, validate_str};
use proptest::prelude::*;
use serde_json::Value;

fn fixture_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/components/salesforce-legacy")
}

fn fixture_text() -> String {
    std::fs::read_to_string(fixture_root().join("component.json")).expect("fixture readable")
}

/// Every finding of the descriptor itself lies within its text.
fn positions_within(report: &Report, file: &Path, text: &[u8]) -> Result<(), TestCaseError> {
    let lines = text.iter().filter(|&&b| b == b'\n').count() + 1;
    for finding in report.findings.iter().filter(|f| f.file == file) {
        prop_assert!(finding.line >= 1 && finding.line <= lines, "{finding}");
        prop_assert!(finding.column >= 1, "{finding}");
        prop_assert!(!finding.message.is_empty());
    }
    Ok(())
}

/// Byte offset of a 1-based line and character column.
fn offset_of(text: &str, line: usize, column: usize) -> Option<usize> {
    let line_start: usize = text
        .split_inclusive('\n')
        .take(line.checked_sub(1)?)
        .map(str::len)
        .sum();
    let rest = text.get(line_start..)?;
    let within: usize = rest
        .chars()
        .take(column.checked_sub(1)?)
        .map(char::len_utf8)
        .sum();
    Some(line_start + within)
}

#[derive(Debug, Clone)]
enum Mutation {
    Delete { at: usize, len: usize },
    Insert { at: usize, bytes: Vec<u8> },
    Replace { at: usize, byte: u8 },
    Duplicate { at: usize, len: usize },
    Truncate { at: usize },
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1usize..40).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (
            any::<usize>(),
            prop::collection::vec(
                prop_oneof![
                    any::<u8>(),
                    Just(b'{'),
                    Just(b'}'),
                    Just(b'"'),
                    Just(b','),
                    Just(b'\\')
                ],
                1..8
            )
        )
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Replace { at, byte }),
        (any::<usize>(), 1usize..200).prop_map(|(at, len)| Mutation::Duplicate { at, len }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
    ]
}

fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    let len = bytes.len();
    let clamp = |at: usize| if len == 0 { 0 } else { at % (len + 1) };
    match mutation {
        Mutation::Delete { at, len: n } => {
            let start = clamp(*at);
            let end = (start + n).min(bytes.len());
            bytes.drain(start..end);
        }
        Mutation::Insert { at, bytes: new } => {
            let at = clamp(*at);
            bytes.splice(at..at, new.iter().copied());
        }
        Mutation::Replace { at, byte } => {
            if len > 0 {
                bytes[at % len] = *byte;
            }
        }
        Mutation::Duplicate { at, len: n } => {
            let start = clamp(*at);
            let end = (start + n).min(bytes.len());
            let copy: Vec<u8> = bytes[start..end].to_vec();
            bytes.splice(end..end, copy);
        }
        Mutation::Truncate { at } => bytes.truncate(clamp(*at)),
    }
}

/// A JSON value to graft into the descriptor.
fn arb_graft() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(Value::from),
        "[a-zA-Z{}./ -]{0,12}".prop_map(Value::String),
        Just(Value::String("SelectView".into())),
        Just(Value::String("./lib/schemas/query.in.json".into())),
        Just(Value::String("https://{{nope}}.example.com".into())),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        Just("title".to_owned()),
                        Just("main".to_owned()),
                        Just("viewClass".to_owned()),
                        Just("model".to_owned()),
                        Just("metadata".to_owned()),
                        Just("in".to_owned()),
                        Just("type".to_owned()),
                        "[a-z/~-]{1,6}",
                    ],
                    inner
                ),
                0..4
            )
            .prop_map(|members| Value::Object(members.into_iter().collect())),
        ]
    })
}

/// Pointers of every value in `value`, containers included.
fn all_pointers(value: &Value, at: String, out: &mut Vec<String>) {
    match value {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                all_pointers(item, format!("{at}/{i}"), out);
            }
        }
        Value::Object(members) => {
            for (key, member) in members {
                let token = key.replace('~', "~0").replace('/', "~1");
                all_pointers(member, format!("{at}/{token}"), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let file = Path::new("component.json");
        let report = validate_bytes(&bytes, file, &Options::for_directory(fixture_root()));
        positions_within(&report, file, &bytes)?;
    }

    #[test]
    fn mutated_descriptors_never_panic(mutations in prop::collection::vec(arb_mutation(), 1..6)) {
        let mut bytes = fixture_text().into_bytes();
        for mutation in &mutations {
            apply(&mut bytes, mutation);
        }
        let file = fixture_root().join("component.json");
        let report = validate_bytes(&bytes, &file, &Options::for_directory(fixture_root()));
        positions_within(&report, &file, &bytes)?;
    }

    /// Grafting random JSON anywhere in a real descriptor: the findings point at the value
    /// their pointer names (or, for a missing member, at the nearest existing ancestor).
    #[test]
    fn grafted_descriptors_report_truthful_positions(
        target in any::<prop::sample::Index>(),
        graft in arb_graft(),
        pretty in any::<bool>(),
    ) {
        let mut root: Value = serde_json::from_str(&fixture_text()).expect("fixture is JSON");
        let mut pointers = Vec::new();
        all_pointers(&root, String::new(), &mut pointers);
        let chosen = pointers[target.index(pointers.len())].clone();
        if let Some(slot) = root.pointer_mut(&chosen) {
            *slot = graft;
        }
        let text = if pretty {
            serde_json::to_string_pretty(&root)
        } else {
            serde_json::to_string(&root)
        }
        .expect("serializable");
        let file = fixture_root().join("component.json");
        let report = validate_str(&text, &file, &Options::for_directory(fixture_root()));
        positions_within(&report, &file, text.as_bytes())?;
        for finding in report.findings.iter().filter(|f| f.file == file) {
            // Walk up to the value the finding is located at.
            let mut pointer = finding.pointer.as_str();
            while root.pointer(pointer).is_none() {
                match pointer.rfind('/') {
                    Some(cut) => pointer = &pointer[..cut],
                    None => break,
                }
            }
            let expected = root.pointer(pointer);
            let rest = offset_of(&text, finding.line, finding.column)
                .and_then(|offset| text.get(offset..))
                .unwrap_or("");
            let found = serde_json::Deserializer::from_str(rest)
                .into_iter::<Value>()
                .next()
                .and_then(Result::ok);
            prop_assert_eq!(found.as_ref(), expected, "{}", finding);
        }
    }
}
