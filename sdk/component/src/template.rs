//! `{{name}}` placeholders in `credentials.oauth2` values.
//!
//! The platform renders these strings with Handlebars, with the credential's field values and
//! the component's env vars in scope (e.g. `https://{{prodEnv}}.salesforce.com/...`). Only the
//! plain-variable subset that descriptors use is supported: `{{name}}`, `{{ name }}` and
//! `{{{name}}}`; a dotted path `{{a.b}}` names variable `a`.

use thiserror::Error;

/// A placeholder found in a template string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholder<'a> {
    /// The variable the placeholder reads (first segment of a dotted path).
    pub name: &'a str,
    /// Byte range of the whole placeholder, braces included, within the template.
    pub span: std::ops::Range<usize>,
}

/// Why a template string cannot be rendered.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TemplateError {
    /// `{{` without a matching `}}`.
    #[error("unclosed placeholder starting at byte {offset}")]
    Unclosed {
        /// Byte offset of the opening braces.
        offset: usize,
    },
    /// Something between the braces that is not a variable name.
    #[error("malformed placeholder {text:?}")]
    Malformed {
        /// The placeholder as written.
        text: String,
    },
    /// The lookup had no value for a variable.
    #[error("no value for placeholder {{{{{name}}}}}")]
    Unknown {
        /// The variable name.
        name: String,
    },
}

/// Lists the placeholders of `template` in order.
///
/// ```
/// use deckhand_component::placeholders;
/// let found = placeholders("https://{{prodEnv}}.salesforce.com/{{ path.x }}").unwrap();
/// let names: Vec<_> = found.iter().map(|p| p.name).collect();
/// assert_eq!(names, ["prodEnv", "path"]);
/// ```
pub fn placeholders(template: &str) -> Result<Vec<Placeholder<'_>>, TemplateError> {
    let mut found = Vec::new();
    let mut rest_start = 0;
    while let Some(rel) = template.get(rest_start..).and_then(|r| r.find("{{")) {
        let open = rest_start + rel;
        let triple = template.get(open..).is_some_and(|s| s.starts_with("{{{"));
        let (open_len, close) = if triple { (3, "}}}") } else { (2, "}}") };
        let inner_start = open + open_len;
        let close_rel = template
            .get(inner_start..)
            .and_then(|s| s.find(close))
            .ok_or(TemplateError::Unclosed { offset: open })?;
        let inner_end = inner_start + close_rel;
        let end = inner_end + close.len();
        let inner = template.get(inner_start..inner_end).unwrap_or("").trim();
        let name = inner.split('.').next().unwrap_or("");
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == '-' || c == '$')
            && inner
                .split('.')
                .all(|seg| !seg.is_empty() && !seg.contains(char::is_whitespace));
        if !valid {
            return Err(TemplateError::Malformed {
                text: template.get(open..end).unwrap_or("").to_owned(),
            });
        }
        found.push(Placeholder {
            name,
            span: open..end,
        });
        rest_start = end;
    }
    Ok(found)
}

/// Replaces every placeholder of `template` with `lookup(name)`.
///
/// Values are inserted verbatim: the platform's Handlebars rendering HTML-escapes `{{x}}`, but
/// the values used in practice (host prefixes, client ids) contain nothing it would escape.
///
/// ```
/// use deckhand_component::render_template;
/// let url = render_template("https://{{prodEnv}}.salesforce.com/services/oauth2/token", |name| {
///     (name == "prodEnv").then(|| "test".to_owned())
/// })
/// .unwrap();
/// assert_eq!(url, "https://test.salesforce.com/services/oauth2/token");
/// ```
pub fn render_template(
    template: &str,
    mut lookup: impl FnMut(&str) -> Option<String>,
) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len());
    let mut copied = 0;
    for placeholder in placeholders(template)? {
        out.push_str(template.get(copied..placeholder.span.start).unwrap_or(""));
        let value = lookup(placeholder.name).ok_or_else(|| TemplateError::Unknown {
            name: placeholder.name.to_owned(),
        })?;
        out.push_str(&value);
        copied = placeholder.span.end;
    }
    out.push_str(template.get(copied..).unwrap_or(""));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_plain_spaced_and_triple_placeholders() {
        let found = placeholders("{{a}}-{{ b }}-{{{c}}}").unwrap();
        let names: Vec<_> = found.iter().map(|p| (p.name, p.span.clone())).collect();
        assert_eq!(names, [("a", 0..5), ("b", 6..13), ("c", 14..21)]);
    }

    #[test]
    fn rejects_unclosed_and_malformed() {
        assert_eq!(
            placeholders("x{{a"),
            Err(TemplateError::Unclosed { offset: 1 })
        );
        assert_eq!(
            placeholders("{{}}"),
            Err(TemplateError::Malformed {
                text: "{{}}".into()
            })
        );
        assert_eq!(
            placeholders("{{a b}}"),
            Err(TemplateError::Malformed {
                text: "{{a b}}".into()
            })
        );
    }

    #[test]
    fn render_reports_unknown_names() {
        assert_eq!(
            render_template("{{x}}", |_| None),
            Err(TemplateError::Unknown { name: "x".into() })
        );
        assert_eq!(render_template("plain", |_| None).as_deref(), Ok("plain"));
    }
}
