//! Reading the step's configuration fields.
//!
//! Object and field names end up in URLs and SOQL, so they are checked to be API names
//! (`Account`, `Invoice__c`, `ns__Field__c`; relationship paths like `Owner.Name` in field
//! lists) rather than escaped: a name that is not one is a configuration mistake.

use std::ops::Deref;

use deckhand::connector::field::{self, Lenient};
use serde::Deserialize;
use serde::de::{Deserializer, Error as _};

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

/// A configuration field holding an API name (an object or a field), checked when the step's
/// configuration is read.
#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "String")]
pub(crate) struct ApiName(String);

impl TryFrom<String> for ApiName {
    type Error = String;
    fn try_from(name: String) -> Result<Self, String> {
        let name = name.trim();
        if is_api_name(name) {
            Ok(Self(name.to_owned()))
        } else {
            Err(format!(
                "must be an API name such as Account or External_Id__c, not `{name}`"
            ))
        }
    }
}

impl Deref for ApiName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// An optional comma-separated list of field API names (empty when the field is).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(try_from = "Option<String>")]
pub(crate) struct FieldList(pub(crate) Vec<String>);

impl TryFrom<Option<String>> for FieldList {
    type Error = String;
    fn try_from(text: Option<String>) -> Result<Self, String> {
        let names: Vec<String> = text
            .iter()
            .flat_map(|text| text.split(','))
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(str::to_owned)
            .collect();
        match names.iter().find(|name| !is_field_path(name)) {
            Some(bad) => Err(format!(
                "must list field API names separated by commas; `{bad}` is not one"
            )),
            None => Ok(Self(names)),
        }
    }
}

/// An optional positive integer field (a `TextFieldView` sends a string; JSON config files a
/// number).
pub(crate) fn positive<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    let invalid = || D::Error::custom("must be a whole number of at least 1");
    match field::optional::<D, Lenient<usize>>(d).map_err(|_| invalid())? {
        Some(Lenient(0)) => Err(invalid()),
        n => Ok(n.map(|Lenient(n)| n)),
    }
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
