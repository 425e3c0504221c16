//! Reading the step's configuration fields.
//!
//! Object and field names end up in URLs and SOQL, so they are checked to be API names
//! (`Account`, `Invoice__c`, `ns__Field__c`; relationship paths like `Owner.Name` in field
//! lists) rather than escaped: a name that is not one is a configuration mistake.

use deckhand::connector::{ConnectorError, ErrorKind, Input};
use serde_json::Value;

/// Whether `name` is a Salesforce API name: a letter, then letters, digits and underscores.
pub(crate) fn is_api_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Whether `path` is a field API name or a relationship path (`Owner.Name`).
fn is_field_path(path: &str) -> bool {
    path.split('.').all(is_api_name)
}

/// A required configuration field holding an API name (an object or a field).
pub(crate) fn api_name<'a>(input: &'a Input, field: &str) -> Result<&'a str, ConnectorError> {
    let name = input.config_str(field)?.trim();
    if is_api_name(name) {
        Ok(name)
    } else {
        Err(ConnectorError::new(
            ErrorKind::InvalidConfiguration,
            format!(
                "configuration field `{field}` must be an API name such as Account or \
                 External_Id__c, not `{name}`"
            ),
        ))
    }
}

/// An optional comma-separated list of field API names; `None` when empty.
pub(crate) fn field_list(
    input: &Input,
    field: &str,
) -> Result<Option<Vec<String>>, ConnectorError> {
    let Some(text) = input.config_opt_str(field) else {
        return Ok(None);
    };
    let names: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect();
    if let Some(bad) = names.iter().find(|name| !is_field_path(name)) {
        return Err(ConnectorError::new(
            ErrorKind::InvalidConfiguration,
            format!(
                "configuration field `{field}` must list field API names separated by commas; \
                 `{bad}` is not one"
            ),
        ));
    }
    Ok((!names.is_empty()).then_some(names))
}

/// A `CheckBoxView` field: checked is `true`, or `"on"`/`"true"` as older platform versions
/// send it.
pub(crate) fn checkbox(input: &Input, field: &str) -> bool {
    match input.config.get(field) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => matches!(s.as_str(), "on" | "true"),
        _ => false,
    }
}

/// An optional positive integer field (a `TextFieldView` sends a string; JSON config files a
/// number).
pub(crate) fn positive_integer(
    input: &Input,
    field: &str,
    default: usize,
) -> Result<usize, ConnectorError> {
    let parsed = match input.config.get(field) {
        None | Some(Value::Null) => return Ok(default),
        Some(Value::String(s)) if s.trim().is_empty() => return Ok(default),
        Some(Value::String(s)) => s.trim().parse::<usize>().ok(),
        Some(Value::Number(n)) => n.as_u64().and_then(|n| usize::try_from(n).ok()),
        Some(_) => None,
    };
    parsed.filter(|&n| n > 0).ok_or_else(|| {
        ConnectorError::new(
            ErrorKind::InvalidConfiguration,
            format!("configuration field `{field}` must be a whole number of at least 1"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_names() {
        for good in ["Account", "Invoice__c", "ns__Thing__c", "A1"] {
            assert!(is_api_name(good), "{good}");
        }
        for bad in [
            "",
            "1Account",
            "Account Name",
            "Account/x",
            "a.b",
            "Name'--",
        ] {
            assert!(!is_api_name(bad), "{bad}");
        }
        assert!(is_field_path("Owner.Name"));
        assert!(!is_field_path("Owner..Name"));
    }
}
