//! Maps JSON pointers of a document to line and column in its source text.
//!
//! serde_json keeps no positions, so this is a small second pass over text that serde_json has
//! already accepted. It still never panics on anything else: every unexpected byte ends the
//! pass and pointers it did not reach fall back to their nearest indexed ancestor (or 1:1).

use std::collections::{HashMap, HashSet};

/// Nesting deeper than serde_json's own limit (128) cannot come from an accepted document; the
/// cap only guards the recursion should this ever be fed something else.
const MAX_DEPTH: usize = 256;

/// Items of one array that get their own position. A descriptor's arrays (scopes, enums) are
/// far shorter; a pathological multi-megabyte array would otherwise cost a pointer string per
/// item. Findings inside later items are located at the array itself.
const MAX_INDEXED_ITEMS: usize = 10_000;

/// A 1-based line and column; columns count Unicode scalar values, as editors do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Position {
    pub line: usize,
    pub column: usize,
}

impl Position {
    pub(crate) const START: Position = Position { line: 1, column: 1 };
}

/// An object key that occurs more than once in the same object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DuplicateKey {
    /// Pointer of the member (parent pointer + escaped key).
    pub pointer: String,
    /// Position of the later occurrence's value.
    pub position: Position,
}

/// Pointer → byte offset of the value, for one source text.
#[derive(Debug)]
pub(crate) struct PositionIndex<'a> {
    text: &'a str,
    values: HashMap<String, usize>,
    line_starts: Vec<usize>,
    duplicates: Vec<DuplicateKey>,
}

impl<'a> PositionIndex<'a> {
    /// Indexes `text`, which should be a JSON document serde_json accepted.
    pub(crate) fn new(text: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(
            text.bytes()
                .enumerate()
                .filter(|&(_, b)| b == b'\n')
                .map(|(i, _)| i + 1),
        );
        let mut scanner = Scanner {
            bytes: text.as_bytes(),
            pos: 0,
            values: HashMap::new(),
            duplicate_offsets: Vec::new(),
        };
        scanner.skip_ws();
        // A failed scan keeps whatever it indexed so far; lookups fall back to ancestors.
        let _ = scanner.value(Some(String::new()), 0);
        let mut index = PositionIndex {
            text,
            values: scanner.values,
            line_starts,
            duplicates: Vec::new(),
        };
        index.duplicates = scanner
            .duplicate_offsets
            .into_iter()
            .map(|(pointer, offset)| DuplicateKey {
                position: index.position_of_offset(offset),
                pointer,
            })
            .collect();
        index
    }

    /// Keys repeated within one object, in document order.
    pub(crate) fn duplicates(&self) -> &[DuplicateKey] {
        &self.duplicates
    }

    /// Position of the value at `pointer`, or of its nearest ancestor that exists.
    pub(crate) fn locate(&self, pointer: &str) -> Position {
        let mut current = pointer;
        loop {
            if let Some(&offset) = self.values.get(current) {
                return self.position_of_offset(offset);
            }
            match current.rfind('/') {
                Some(cut) => current = &current[..cut],
                None => return Position::START,
            }
        }
    }

    /// Whether `pointer` names a value in the document.
    #[cfg(test)]
    pub(crate) fn contains(&self, pointer: &str) -> bool {
        self.values.contains_key(pointer)
    }

    pub(crate) fn position_of_offset(&self, offset: usize) -> Position {
        position_in(self.text, &self.line_starts, offset)
    }
}

/// Line and column of byte `offset`; offsets inside a multi-byte character count as that
/// character.
fn position_in(text: &str, line_starts: &[usize], offset: usize) -> Position {
    let offset = offset.min(text.len());
    let line_index = line_starts
        .partition_point(|&start| start <= offset)
        .saturating_sub(1);
    let line_start = line_starts.get(line_index).copied().unwrap_or(0);
    let prefix = text.as_bytes().get(line_start..offset).unwrap_or(&[]);
    // Counting bytes that do not continue a UTF-8 sequence counts characters without
    // needing `offset` to sit on a character boundary.
    let column = prefix.iter().filter(|&&b| (b & 0xC0) != 0x80).count() + 1;
    Position {
        line: line_index + 1,
        column,
    }
}

/// Position of byte `offset` in `text` (used for parser errors and invalid UTF-8).
pub(crate) fn position_of(text: &[u8], offset: usize) -> Position {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(&[]);
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let column = before
        .get(line_start..)
        .unwrap_or(&[])
        .iter()
        .filter(|&&b| (b & 0xC0) != 0x80)
        .count()
        + 1;
    Position { line, column }
}

/// Converts serde_json's error position (1-based line, byte column that may be 0 at a line
/// start) into a character column within that line.
pub(crate) fn position_from_serde(text: &[u8], line: usize, byte_column: usize) -> Position {
    if line == 0 {
        return Position::START;
    }
    let mut line_start = 0;
    let mut seen = 1;
    for (i, &b) in text.iter().enumerate() {
        if seen == line {
            break;
        }
        if b == b'\n' {
            seen += 1;
            line_start = i + 1;
        }
    }
    if seen < line {
        return position_of(text, text.len());
    }
    let line_bytes = text.get(line_start..).unwrap_or(&[]);
    let line_end = line_bytes
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(line_bytes.len());
    // serde_json's column is the count of bytes consumed on the line, i.e. it points at the
    // last byte it read; that byte is the culprit, so report its character position.
    let consumed = byte_column.min(line_end);
    let upto = line_bytes.get(..consumed).unwrap_or(&[]);
    let chars = upto.iter().filter(|&&b| (b & 0xC0) != 0x80).count();
    Position {
        line,
        column: chars.max(1),
    }
}

/// Escapes one reference token of a JSON pointer (RFC 6901).
pub(crate) fn escape_token(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

struct Scanner<'t> {
    bytes: &'t [u8],
    pos: usize,
    values: HashMap<String, usize>,
    duplicate_offsets: Vec<(String, usize)>,
}

/// The scan stopped at something that is not JSON.
struct Stop;

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Result<(), Stop> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(Stop)
        }
    }

    /// Scans the value starting at the current (non-whitespace) position, recording its
    /// offset under `pointer` (`None`: scan without recording).
    fn value(&mut self, pointer: Option<String>, depth: usize) -> Result<(), Stop> {
        if depth > MAX_DEPTH {
            return Err(Stop);
        }
        let start = self.pos;
        if let Some(pointer) = &pointer {
            self.values.insert(pointer.clone(), start);
        }
        match self.peek() {
            Some(b'{') => self.object(pointer.as_deref(), depth),
            Some(b'[') => self.array(pointer.as_deref(), depth),
            Some(b'"') => self.string().map(drop),
            Some(_) => self.scalar(),
            None => Err(Stop),
        }
    }

    fn object(&mut self, pointer: Option<&str>, depth: usize) -> Result<(), Stop> {
        self.expect(b'{')?;
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        let mut seen: HashSet<String> = HashSet::new();
        loop {
            self.skip_ws();
            let key = self.string()?;
            self.skip_ws();
            self.expect(b':')?;
            self.skip_ws();
            let member = pointer.map(|pointer| format!("{pointer}/{}", escape_token(&key)));
            if let Some(member) = &member
                && !seen.insert(key)
            {
                self.duplicate_offsets.push((member.clone(), self.pos));
            }
            self.value(member, depth + 1)?;
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(Stop),
            }
        }
    }

    fn array(&mut self, pointer: Option<&str>, depth: usize) -> Result<(), Stop> {
        self.expect(b'[')?;
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        let mut index = 0usize;
        loop {
            self.skip_ws();
            // Items past the cap are scanned, not recorded: their findings point at the array.
            let item = pointer
                .filter(|_| index < MAX_INDEXED_ITEMS)
                .map(|pointer| format!("{pointer}/{index}"));
            self.value(item, depth + 1)?;
            index += 1;
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(Stop),
            }
        }
    }

    /// Numbers, `true`, `false`, `null`: serde_json already checked their spelling.
    fn scalar(&mut self) -> Result<(), Stop> {
        let start = self.pos;
        while let Some(b) = self.peek() {
            if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                break;
            }
            self.pos += 1;
        }
        if self.pos == start { Err(Stop) } else { Ok(()) }
    }

    /// Scans a string literal and returns its decoded content.
    fn string(&mut self) -> Result<String, Stop> {
        self.expect(b'"')?;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let b = self.peek().ok_or(Stop)?;
            self.pos += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    let escaped = self.peek().ok_or(Stop)?;
                    self.pos += 1;
                    let simple = match escaped {
                        b'"' => Some(b'"'),
                        b'\\' => Some(b'\\'),
                        b'/' => Some(b'/'),
                        b'b' => Some(0x08),
                        b'f' => Some(0x0C),
                        b'n' => Some(b'\n'),
                        b'r' => Some(b'\r'),
                        b't' => Some(b'\t'),
                        b'u' => None,
                        _ => return Err(Stop),
                    };
                    match simple {
                        Some(byte) => out.push(byte),
                        None => {
                            let c = self.unicode_escape()?;
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                        }
                    }
                }
                other => out.push(other),
            }
        }
        String::from_utf8(out).map_err(|_| Stop)
    }

    /// Decodes the hex digits after `\u`, joining surrogate pairs.
    fn unicode_escape(&mut self) -> Result<char, Stop> {
        let first = self.hex4()?;
        if (0xD800..0xDC00).contains(&first) {
            if self.bytes.get(self.pos..self.pos + 2) == Some(b"\\u") {
                self.pos += 2;
                let second = self.hex4()?;
                if (0xDC00..0xE000).contains(&second) {
                    let code = 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00);
                    return char::from_u32(code).ok_or(Stop);
                }
            }
            return Ok(char::REPLACEMENT_CHARACTER);
        }
        Ok(char::from_u32(first).unwrap_or(char::REPLACEMENT_CHARACTER))
    }

    fn hex4(&mut self) -> Result<u32, Stop> {
        let digits = self.bytes.get(self.pos..self.pos + 4).ok_or(Stop)?;
        let text = std::str::from_utf8(digits).map_err(|_| Stop)?;
        let value = u32::from_str_radix(text, 16).map_err(|_| Stop)?;
        self.pos += 4;
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_nested_values_and_escaped_keys() {
        let text = "{\n  \"a\": {\"b/c\": [1, \"x\"]},\n  \"é\": \"ü\", \"t~\": null\n}";
        let index = PositionIndex::new(text);
        assert_eq!(index.locate(""), Position { line: 1, column: 1 });
        assert_eq!(index.locate("/a"), Position { line: 2, column: 8 });
        assert_eq!(
            index.locate("/a/b~1c/1"),
            Position {
                line: 2,
                column: 20
            }
        );
        assert_eq!(index.locate("/é"), Position { line: 3, column: 8 });
        assert_eq!(
            index.locate("/t~0"),
            Position {
                line: 3,
                column: 19
            }
        );
        // Missing members fall back to the closest ancestor that exists.
        assert_eq!(
            index.locate("/a/missing/deeper"),
            Position { line: 2, column: 8 }
        );
        assert!(index.contains("/a/b~1c/0"));
    }

    #[test]
    fn decodes_escapes_in_keys() {
        let text = r#"{"a\u00e9\ud83d\ude00\n": 1}"#;
        let index = PositionIndex::new(text);
        assert!(index.contains("/aé😀\n"));
    }

    #[test]
    fn reports_duplicate_keys() {
        let text = "{\"a\": 1,\n \"a\": 2}";
        let index = PositionIndex::new(text);
        assert_eq!(
            index.duplicates(),
            &[DuplicateKey {
                pointer: "/a".into(),
                position: Position { line: 2, column: 7 }
            }]
        );
    }

    #[test]
    fn serde_positions_become_character_columns() {
        let text = "{\"é\": x}".as_bytes();
        let err = serde_json::from_slice::<serde_json::Value>(text).unwrap_err();
        let pos = position_from_serde(text, err.line(), err.column());
        assert_eq!(pos, Position { line: 1, column: 7 });
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;
        use serde_json::Value;

        fn arb_key() -> impl Strategy<Value = String> {
            prop_oneof!["[a-z]{1,5}", "[~/\"\\\u{0}-\u{1f}é😀 a]{0,4}"]
        }

        fn arb_json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                (-1e6f64..1e6).prop_map(Value::from),
                "[a-z\"\\/\u{0}-\u{1f}é😀]{0,6}".prop_map(Value::String),
            ];
            leaf.prop_recursive(5, 96, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                    prop::collection::vec((arb_key(), inner), 0..5)
                        .prop_map(|members| Value::Object(members.into_iter().collect())),
                ]
            })
        }

        fn pointers<'v>(value: &'v Value, at: String, out: &mut Vec<(String, &'v Value)>) {
            match value {
                Value::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        pointers(item, format!("{at}/{i}"), out);
                    }
                }
                Value::Object(members) => {
                    for (key, member) in members {
                        pointers(member, format!("{at}/{}", escape_token(key)), out);
                    }
                }
                _ => {}
            }
            out.push((at, value));
        }

        /// Byte offset of a line/column, recomputed from scratch.
        fn offset_of(text: &str, position: Position) -> Option<usize> {
            let line_start: usize = text
                .split_inclusive('\n')
                .take(position.line - 1)
                .map(str::len)
                .sum();
            let line = text.get(line_start..)?;
            let within: usize = line
                .chars()
                .take(position.column - 1)
                .map(char::len_utf8)
                .sum();
            Some(line_start + within)
        }

        proptest! {
            #[test]
            fn every_pointer_locates_its_value(value in arb_json(), pretty in any::<bool>()) {
                let text = if pretty {
                    serde_json::to_string_pretty(&value)
                } else {
                    serde_json::to_string(&value)
                }
                .expect("serializable");
                let index = PositionIndex::new(&text);
                let mut all = Vec::new();
                pointers(&value, String::new(), &mut all);
                for (pointer, expected) in all {
                    prop_assert!(index.contains(&pointer), "{pointer:?} not indexed in {text}");
                    let offset = offset_of(&text, index.locate(&pointer));
                    let rest = offset.and_then(|o| text.get(o..)).unwrap_or("");
                    let found = serde_json::Deserializer::from_str(rest)
                        .into_iter::<Value>()
                        .next()
                        .and_then(Result::ok);
                    prop_assert_eq!(found.as_ref(), Some(expected), "{} in {}", pointer, text);
                }
            }

            #[test]
            fn arbitrary_text_never_panics(text in "\\PC{0,64}", offset in 0usize..80) {
                let index = PositionIndex::new(&text);
                let _ = index.locate("/a/0/b");
                let _ = index.position_of_offset(offset);
                let _ = position_of(text.as_bytes(), offset);
                let _ = position_from_serde(text.as_bytes(), offset % 5, offset);
            }
        }
    }
}
