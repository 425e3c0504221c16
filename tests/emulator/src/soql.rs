//! The SOQL subset understood by the emulator:
//!
//! ```text
//! SELECT field [, field ...] FROM Object
//!     [WHERE field op literal [AND field op literal ...]]
//!     [ORDER BY field [ASC | DESC] [NULLS FIRST | NULLS LAST]]
//!     [LIMIT n] [OFFSET n]
//! ```
//!
//! * `op` is one of `=`, `!=`, `<>`, `<`, `<=`, `>`, `>=`.
//! * A literal is a date-time (`2024-01-01T00:00:00Z`, `2024-01-01T00:00:00.000+0000`), a
//!   date (`2024-01-01`), a number, `true`/`false`, `null`, or a `'quoted string'`
//!   (backslash escapes). Text comparisons are case-insensitive, like Salesforce.
//! * Keywords and field names are case-insensitive. A selected field that a record does not
//!   have comes back as `null`.
//! * Not supported (answered with 400 `MALFORMED_QUERY`): `OR`, `NOT`, parentheses, `IN`,
//!   `LIKE`, functions such as `COUNT()`, relationship fields (`Account.Name`), date literals
//!   such as `LAST_N_DAYS:7`, bind variables.

use crate::filter::{CmpOp, Condition, Literal};

/// A parsed query.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Query {
    pub(crate) fields: Vec<String>,
    pub(crate) object: String,
    pub(crate) conditions: Vec<Condition>,
    /// `(field, descending)`.
    pub(crate) order_by: Option<(String, bool)>,
    pub(crate) limit: Option<usize>,
    pub(crate) offset: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Text(String),
    Comma,
    Op(CmpOp),
}

fn tokenize(soql: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = soql.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            ',' => {
                chars.next();
                tokens.push(Token::Comma);
            }
            '\'' => {
                chars.next();
                let mut text = String::new();
                loop {
                    match chars.next() {
                        Some('\\') => match chars.next() {
                            Some('n') => text.push('\n'),
                            Some('t') => text.push('\t'),
                            Some(other) => text.push(other),
                            None => return Err("unterminated string literal".into()),
                        },
                        Some('\'') => break,
                        Some(other) => text.push(other),
                        None => return Err("unterminated string literal".into()),
                    }
                }
                tokens.push(Token::Text(text));
            }
            '=' | '!' | '<' | '>' => {
                chars.next();
                let next = chars.peek().copied();
                let (op, consumed_next) = match (c, next) {
                    ('=', _) => (CmpOp::Eq, false),
                    ('!', Some('=')) => (CmpOp::Ne, true),
                    ('<', Some('>')) => (CmpOp::Ne, true),
                    ('<', Some('=')) => (CmpOp::Le, true),
                    ('<', _) => (CmpOp::Lt, false),
                    ('>', Some('=')) => (CmpOp::Ge, true),
                    ('>', _) => (CmpOp::Gt, false),
                    _ => return Err("unexpected '!'".into()),
                };
                if consumed_next {
                    chars.next();
                }
                tokens.push(Token::Op(op));
            }
            '(' | ')' | ':' => {
                return Err(format!(
                    "'{c}' is not supported by the emulator's SOQL subset"
                ));
            }
            _ => {
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace()
                        || matches!(c, ',' | '\'' | '=' | '!' | '<' | '>' | '(' | ')')
                    {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                tokens.push(Token::Word(word));
            }
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        token
    }

    fn peek_keyword(&self, keyword: &str) -> bool {
        matches!(self.peek(), Some(Token::Word(w)) if w.eq_ignore_ascii_case(keyword))
    }

    fn eat_keyword(&mut self, keyword: &str) -> bool {
        let found = self.peek_keyword(keyword);
        if found {
            self.pos += 1;
        }
        found
    }

    fn expect_keyword(&mut self, keyword: &str) -> Result<(), String> {
        if self.eat_keyword(keyword) {
            Ok(())
        } else {
            Err(format!("expected {keyword}"))
        }
    }

    fn identifier(&mut self, what: &str) -> Result<String, String> {
        match self.next() {
            Some(Token::Word(word)) => {
                if word.contains('.') {
                    return Err(format!(
                        "relationship field '{word}' is not supported by the emulator"
                    ));
                }
                Ok(word)
            }
            _ => Err(format!("expected {what}")),
        }
    }

    fn number(&mut self, what: &str) -> Result<usize, String> {
        match self.next() {
            Some(Token::Word(word)) => word
                .parse()
                .map_err(|_| format!("{what} must be a non-negative integer")),
            _ => Err(format!("expected a number after {what}")),
        }
    }

    fn condition(&mut self) -> Result<Condition, String> {
        let field = self.identifier("a field name in WHERE")?;
        let op = match self.next() {
            Some(Token::Op(op)) => op,
            Some(Token::Word(w)) => {
                return Err(format!(
                    "operator '{w}' is not supported by the emulator (use = != < <= > >=)"
                ));
            }
            _ => return Err(format!("expected a comparison operator after '{field}'")),
        };
        let value = match self.next() {
            Some(Token::Text(text)) => Literal::Text(text),
            Some(Token::Word(word)) => {
                Literal::from_bare(&word).ok_or_else(|| format!("unsupported literal '{word}'"))?
            }
            _ => return Err(format!("expected a value after '{field}'")),
        };
        Ok(Condition {
            path: vec![field],
            op,
            value,
        })
    }
}

/// Parses a query of the supported subset; the error is a human-readable description.
pub(crate) fn parse(soql: &str) -> Result<Query, String> {
    let mut p = Parser {
        tokens: tokenize(soql)?,
        pos: 0,
    };
    p.expect_keyword("SELECT")?;
    let mut fields = vec![p.identifier("a field list after SELECT")?];
    while p.peek() == Some(&Token::Comma) {
        p.pos += 1;
        fields.push(p.identifier("a field name after ','")?);
    }
    p.expect_keyword("FROM")?;
    let object = p.identifier("an object name after FROM")?;

    let mut conditions = Vec::new();
    if p.eat_keyword("WHERE") {
        conditions.push(p.condition()?);
        loop {
            if p.eat_keyword("AND") {
                conditions.push(p.condition()?);
            } else if p.peek_keyword("OR") || p.peek_keyword("NOT") {
                return Err("OR and NOT are not supported by the emulator".into());
            } else {
                break;
            }
        }
    }

    let mut order_by = None;
    if p.eat_keyword("ORDER") {
        p.expect_keyword("BY")?;
        let field = p.identifier("a field name after ORDER BY")?;
        let descending = if p.eat_keyword("DESC") {
            true
        } else {
            p.eat_keyword("ASC");
            false
        };
        if p.eat_keyword("NULLS") && !(p.eat_keyword("FIRST") || p.eat_keyword("LAST")) {
            return Err("expected FIRST or LAST after NULLS".into());
        }
        order_by = Some((field, descending));
    }

    let limit = if p.eat_keyword("LIMIT") {
        Some(p.number("LIMIT")?)
    } else {
        None
    };
    let offset = if p.eat_keyword("OFFSET") {
        Some(p.number("OFFSET")?)
    } else {
        None
    };
    if let Some(token) = p.peek() {
        return Err(format!("unexpected token {token:?}"));
    }
    Ok(Query {
        fields,
        object,
        conditions,
        order_by,
        limit,
        offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_supported_subset() {
        let q = parse(
            "select Id, Name,LastModifiedDate from Account \
             where LastModifiedDate>2024-01-01T00:00:00Z and Name != 'O\\'Brien' \
             order by LastModifiedDate desc nulls last limit 10 offset 2",
        )
        .unwrap();
        assert_eq!(q.fields, ["Id", "Name", "LastModifiedDate"]);
        assert_eq!(q.object, "Account");
        assert_eq!(q.conditions.len(), 2);
        assert_eq!(q.conditions[0].op, CmpOp::Gt);
        assert_eq!(q.conditions[1].value, Literal::Text("O'Brien".into()));
        assert_eq!(q.order_by, Some(("LastModifiedDate".into(), true)));
        assert_eq!((q.limit, q.offset), (Some(10), Some(2)));
    }

    #[test]
    fn rejects_what_it_does_not_support() {
        for bad in [
            "",
            "SELECT FROM Account",
            "SELECT Id FROM",
            "SELECT COUNT() FROM Account",
            "SELECT Account.Name FROM Contact",
            "SELECT Id FROM Account WHERE Name = 'a' OR Name = 'b'",
            "SELECT Id FROM Account WHERE Name LIKE 'a%'",
            "SELECT Id FROM Account WHERE CreatedDate = LAST_N_DAYS:7",
            "SELECT Id FROM Account WHERE Name = 'unterminated",
            "SELECT Id FROM Account LIMIT x",
            "SELECT Id FROM Account GROUP BY Name",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
