//! Record predicates shared by the SOQL subset and Graph `$filter`.

use std::cmp::Ordering;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::time::parse_datetime;

/// A JSON object standing for a record (Salesforce sObject, Graph user or message).
pub(crate) type Record = Map<String, Value>;

/// Comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    fn holds(self, ordering: Option<Ordering>) -> bool {
        match (self, ordering) {
            (CmpOp::Ne, None) => true,
            (_, None) => false,
            (CmpOp::Eq, Some(o)) => o == Ordering::Equal,
            (CmpOp::Ne, Some(o)) => o != Ordering::Equal,
            (CmpOp::Lt, Some(o)) => o == Ordering::Less,
            (CmpOp::Le, Some(o)) => o != Ordering::Greater,
            (CmpOp::Gt, Some(o)) => o == Ordering::Greater,
            (CmpOp::Ge, Some(o)) => o != Ordering::Less,
        }
    }
}

/// A literal on the right-hand side of a comparison.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Literal {
    DateTime(DateTime<Utc>),
    Number(f64),
    Text(String),
    Bool(bool),
    Null,
}

impl Literal {
    /// Interprets an unquoted literal: `null`, `true`/`false`, a number or a date-time.
    pub(crate) fn from_bare(word: &str) -> Option<Literal> {
        match word.to_ascii_lowercase().as_str() {
            "null" => return Some(Literal::Null),
            "true" => return Some(Literal::Bool(true)),
            "false" => return Some(Literal::Bool(false)),
            _ => {}
        }
        if word.contains('-') || word.contains(':') {
            return parse_datetime(word).map(Literal::DateTime);
        }
        word.parse::<f64>().ok().map(Literal::Number)
    }
}

/// `field op literal`; `path` has more than one element for nested Graph properties
/// such as `from/emailAddress/address`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Condition {
    pub(crate) path: Vec<String>,
    pub(crate) op: CmpOp,
    pub(crate) value: Literal,
}

impl Condition {
    /// Whether `record` satisfies the condition. Field names match case-insensitively.
    pub(crate) fn matches(&self, record: &Record) -> bool {
        let actual = lookup_path(record, &self.path).unwrap_or(&Value::Null);
        if self.value == Literal::Null {
            let is_null = actual.is_null();
            return match self.op {
                CmpOp::Eq => is_null,
                CmpOp::Ne => !is_null,
                _ => false,
            };
        }
        self.op.holds(compare_to_literal(actual, &self.value))
    }
}

fn compare_to_literal(actual: &Value, literal: &Literal) -> Option<Ordering> {
    match literal {
        Literal::DateTime(expected) => Some(parse_datetime(actual.as_str()?)?.cmp(expected)),
        Literal::Number(expected) => actual.as_f64()?.partial_cmp(expected),
        Literal::Text(expected) => Some(
            actual
                .as_str()?
                .to_lowercase()
                .cmp(&expected.to_lowercase()),
        ),
        Literal::Bool(expected) => Some(actual.as_bool()?.cmp(expected)),
        Literal::Null => None,
    }
}

/// Case-insensitive field lookup; returns the record's own spelling of the key.
pub(crate) fn lookup_field<'a>(record: &'a Record, name: &str) -> Option<(&'a String, &'a Value)> {
    record.get_key_value(name).or_else(|| {
        record
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
    })
}

fn lookup_path<'a>(record: &'a Record, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut value = lookup_field(record, first)?.1;
    for segment in rest {
        value = lookup_field(value.as_object()?, segment)?.1;
    }
    Some(value)
}

/// Orders two field values for `ORDER BY` / `$orderby`: nulls first, then date-times,
/// numbers, booleans or strings (case-insensitively).
pub(crate) fn compare_values(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Null, _) => Ordering::Less,
        (_, Value::Null) => Ordering::Greater,
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::String(x), Value::String(y)) => match (parse_datetime(x), parse_datetime(y)) {
            (Some(x), Some(y)) => x.cmp(&y),
            _ => x.to_lowercase().cmp(&y.to_lowercase()),
        },
        _ => a.to_string().cmp(&b.to_string()),
    }
}

/// Sorts records by one field (stable, so ties keep their store order).
pub(crate) fn sort_records(records: &mut [Record], field: &str, descending: bool) {
    records.sort_by(|a, b| {
        let a = lookup_field(a, field).map_or(&Value::Null, |(_, v)| v);
        let b = lookup_field(b, field).map_or(&Value::Null, |(_, v)| v);
        let ordering = compare_values(a, b);
        if descending {
            ordering.reverse()
        } else {
            ordering
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(value: Value) -> Record {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn conditions_compare_by_literal_type() {
        let r = record(json!({
            "LastModifiedDate": "2024-01-02T00:00:00.000+0000",
            "Amount": 5,
            "Name": "Acme",
            "from": {"emailAddress": {"address": "a@b.test"}},
        }));
        let cond = |path: &[&str], op, value| Condition {
            path: path.iter().map(|s| s.to_string()).collect(),
            op,
            value,
        };
        let jan1 = Literal::from_bare("2024-01-01T00:00:00Z").unwrap();
        assert!(cond(&["lastmodifieddate"], CmpOp::Gt, jan1.clone()).matches(&r));
        assert!(!cond(&["LastModifiedDate"], CmpOp::Lt, jan1).matches(&r));
        assert!(cond(&["Amount"], CmpOp::Ge, Literal::Number(5.0)).matches(&r));
        assert!(cond(&["Name"], CmpOp::Eq, Literal::Text("ACME".into())).matches(&r));
        assert!(cond(&["Missing"], CmpOp::Eq, Literal::Null).matches(&r));
        assert!(!cond(&["Missing"], CmpOp::Gt, Literal::Number(1.0)).matches(&r));
        assert!(
            cond(
                &["from", "emailAddress", "address"],
                CmpOp::Eq,
                Literal::Text("a@b.test".into())
            )
            .matches(&r)
        );
    }
}
