//! Validation rules: declarative checks of a table's rows, written in the config
//! (`[[tables.rules]]`), parsed when the config is loaded and compiled against the columns of
//! each writer schema. A row that breaks a rule never reaches the target: it goes to the DLQ
//! with the rule's name and a reason that shows the offending value.
//!
//! The grammar (keywords in any case):
//!
//! ```text
//! column op constant        op: = != <> < <= > >=     salary > 10000, dob > 2007-01-01
//! column IS NOT NULL
//! column [NOT] IN (c, ...)                            type in (1, 2)
//! LENGTH(column) op n                                 length(name) <= 64
//! column ~ 'regex'   column !~ 'regex'                email ~ '^[^@]+@[^@]+$'
//! ```
//!
//! Like a SQL `CHECK` constraint, a rule on a NULL value passes, except `IS NOT NULL`.
//! Comparisons follow the column's type: integers and numerics exactly, floats, dates and
//! timestamps by value, booleans by value, text byte by byte (not by collation).

use std::cmp::Ordering;
use std::fmt;

use crate::rules_value::{self, Kind, Typed};

/// A rule as parsed from the config, before it is compiled against a table's columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub check: String,
    column: String,
    test: Test,
}

#[derive(Debug, Clone, PartialEq)]
enum Test {
    Compare(CmpOp, String),
    NotNull,
    In { negated: bool, values: Vec<String> },
    Length(CmpOp, usize),
    Matches { negated: bool, pattern: String },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    fn holds(self, o: Ordering) -> bool {
        match self {
            CmpOp::Eq => o == Ordering::Equal,
            CmpOp::Ne => o != Ordering::Equal,
            CmpOp::Lt => o == Ordering::Less,
            CmpOp::Le => o != Ordering::Greater,
            CmpOp::Gt => o == Ordering::Greater,
            CmpOp::Ge => o != Ordering::Less,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RuleError {
    #[error("rule '{rule}': cannot parse '{check}': {problem}")]
    Malformed {
        rule: String,
        check: String,
        problem: String,
    },
    #[error("rule '{rule}': column '{column}' is not a column of the table")]
    UnknownColumn { rule: String, column: String },
    #[error("rule '{rule}': {problem}")]
    Incompatible { rule: String, problem: String },
}

/// A row that broke a rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    pub rule: String,
    pub reason: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rule '{}': {}", self.rule, self.reason)
    }
}

impl Rule {
    /// Parses `check`; `name` defaults to the check's text.
    pub fn parse(name: Option<&str>, check: &str) -> Result<Rule, RuleError> {
        let name = name.map_or_else(|| check.trim().to_string(), str::to_string);
        let parsed = tokenize(check).and_then(|tokens| {
            let mut t = tokens.iter().map(String::as_str).peekable();
            let first = t.next().ok_or("the rule is empty")?;
            let (column, test) = if first.eq_ignore_ascii_case("length") {
                parse_length(&mut t)?
            } else {
                let column = ident(Some(first))?;
                let word = t.next().ok_or("expected an operator after the column")?;
                (column, parse_test(word, &mut t)?)
            };
            match t.next() {
                Some(extra) => Err(format!("unexpected '{extra}' after the rule")),
                None => Ok((column, test)),
            }
        });
        let (column, test) = parsed.map_err(|problem| RuleError::Malformed {
            rule: name.clone(),
            check: check.to_string(),
            problem,
        })?;
        Ok(Rule {
            name,
            check: check.trim().to_string(),
            column,
            test,
        })
    }

    /// The column the rule tests.
    pub fn column(&self) -> &str {
        &self.column
    }
}

/// `LENGTH ( column ) op n`, after the word `LENGTH`.
fn parse_length<'a>(t: &mut impl Iterator<Item = &'a str>) -> Result<(String, Test), String> {
    if t.next() != Some("(") {
        return Err("expected '(' after LENGTH".into());
    }
    let column = ident(t.next())?;
    if t.next() != Some(")") {
        return Err("expected ')' after the column".into());
    }
    let op = cmp_op(t.next())?;
    let n = t
        .next()
        .and_then(|s| s.parse::<usize>().ok())
        .ok_or("LENGTH compares with a non-negative integer")?;
    Ok((column, Test::Length(op, n)))
}

/// The test after a column: `word` is its first token.
fn parse_test<'a>(word: &str, t: &mut impl Iterator<Item = &'a str>) -> Result<Test, String> {
    let upper = word.to_ascii_uppercase();
    match upper.as_str() {
        "IS" => {
            let (a, b) = (t.next().map(str::to_ascii_uppercase), t.next());
            if a.as_deref() != Some("NOT") || !b.is_some_and(|b| b.eq_ignore_ascii_case("null")) {
                return Err("the only IS test is IS NOT NULL".into());
            }
            Ok(Test::NotNull)
        }
        "IN" | "NOT" => {
            let negated = upper == "NOT";
            if negated && !t.next().is_some_and(|w| w.eq_ignore_ascii_case("in")) {
                return Err("expected IN after NOT".into());
            }
            Ok(Test::In {
                negated,
                values: parse_in_list(t)?,
            })
        }
        "~" | "!~" => {
            let pattern = t
                .next()
                .and_then(|s| s.strip_prefix('\''))
                .ok_or("a regular expression is a quoted string")?;
            regex::Regex::new(pattern).map_err(|e| format!("bad regular expression: {e}"))?;
            Ok(Test::Matches {
                negated: upper == "!~",
                pattern: pattern.to_string(),
            })
        }
        _ => {
            let op = cmp_op(Some(word))?;
            let v = t.next().ok_or("expected a constant after the operator")?;
            Ok(Test::Compare(op, constant(v)?))
        }
    }
}

/// `( v1, v2, ... )`, after `IN`.
fn parse_in_list<'a>(t: &mut impl Iterator<Item = &'a str>) -> Result<Vec<String>, String> {
    if t.next() != Some("(") {
        return Err("expected '(' after IN".into());
    }
    let mut values = Vec::new();
    loop {
        let v = t.next().ok_or("unclosed IN list")?;
        if v == ")" && values.is_empty() {
            return Err("the IN list is empty".into());
        }
        values.push(constant(v)?);
        match t.next() {
            Some(",") => {}
            Some(")") => return Ok(values),
            _ => return Err("expected ',' or ')' in the IN list".into()),
        }
    }
}

/// Splits a rule into tokens: words and numbers, quoted strings (kept with a leading `'` as a
/// marker, `''` unescaped), operators and punctuation.
fn tokenize(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '\'' {
            chars.next();
            let mut lit = String::from("'");
            loop {
                match chars.next() {
                    None => return Err("unterminated quoted string".into()),
                    Some('\'') if chars.peek() == Some(&'\'') => {
                        chars.next();
                        lit.push('\'');
                    }
                    Some('\'') => break,
                    Some(ch) => lit.push(ch),
                }
            }
            out.push(lit);
        } else if c == '"' {
            chars.next();
            let mut id = String::from("\"");
            loop {
                match chars.next() {
                    None => return Err("unterminated quoted identifier".into()),
                    Some('"') => break,
                    Some(ch) => id.push(ch),
                }
            }
            out.push(id);
        } else if matches!(c, '(' | ')' | ',') {
            chars.next();
            out.push(c.to_string());
        } else if matches!(c, '<' | '>' | '=' | '!' | '~') {
            let mut op = String::new();
            while let Some(&o) = chars.peek() {
                if matches!(o, '<' | '>' | '=' | '!' | '~') {
                    op.push(o);
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(op);
        } else {
            let mut word = String::new();
            while let Some(&w) = chars.peek() {
                if w.is_whitespace()
                    || matches!(w, '(' | ')' | ',' | '\'' | '<' | '>' | '=' | '!' | '~')
                {
                    break;
                }
                word.push(w);
                chars.next();
            }
            out.push(word);
        }
    }
    Ok(out)
}

fn ident(t: Option<&str>) -> Result<String, String> {
    match t {
        Some(s) if s.starts_with('"') => Ok(s[1..].to_string()),
        Some(s)
            if s.chars()
                .next()
                .is_some_and(|c| c.is_alphabetic() || c == '_') =>
        {
            Ok(s.to_lowercase())
        }
        Some(s) => Err(format!("'{s}' is not a column name")),
        None => Err("expected a column name".into()),
    }
}

fn cmp_op(t: Option<&str>) -> Result<CmpOp, String> {
    Ok(match t {
        Some("=") => CmpOp::Eq,
        Some("!=") | Some("<>") => CmpOp::Ne,
        Some("<") => CmpOp::Lt,
        Some("<=") => CmpOp::Le,
        Some(">") => CmpOp::Gt,
        Some(">=") => CmpOp::Ge,
        Some(other) => return Err(format!("unknown operator '{other}'")),
        None => return Err("expected an operator".into()),
    })
}

fn constant(t: &str) -> Result<String, String> {
    if let Some(s) = t.strip_prefix('\'') {
        return Ok(s.to_string());
    }
    if t.starts_with('"') || matches!(t, "(" | ")" | ",") || t.is_empty() {
        return Err(format!("'{t}' is not a constant"));
    }
    Ok(t.to_string())
}

/// A rule bound to a column of one writer schema: the column's position and type, and the
/// constants already read as that type.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    rule: Rule,
    index: usize,
    kind: Kind,
    constants: Vec<Typed>,
    regex: Option<regex::Regex>,
}

/// Compiles `rules` against a row's columns (`(name, PostgreSQL type)` in row order).
pub fn compile(rules: &[Rule], columns: &[(&str, &str)]) -> Result<Vec<CompiledRule>, RuleError> {
    rules
        .iter()
        .map(|r| {
            let index = columns
                .iter()
                .position(|(c, _)| *c == r.column)
                .ok_or_else(|| RuleError::UnknownColumn {
                    rule: r.name.clone(),
                    column: r.column.clone(),
                })?;
            let pg_type = columns[index].1;
            let kind = rules_value::kind_of(pg_type);
            let incompatible = |problem: String| RuleError::Incompatible {
                rule: r.name.clone(),
                problem,
            };
            let constants = match &r.test {
                Test::Compare(op, c) => {
                    if kind == Kind::Other
                        || (kind == Kind::Bool && !matches!(op, CmpOp::Eq | CmpOp::Ne))
                    {
                        return Err(incompatible(format!(
                            "column '{}' of type {pg_type} cannot be compared with {op:?}",
                            r.column
                        )));
                    }
                    vec![typed_constant(kind, c, pg_type).map_err(incompatible)?]
                }
                Test::In { values, .. } => values
                    .iter()
                    .map(|c| typed_constant(kind, c, pg_type))
                    .collect::<Result<_, _>>()
                    .map_err(incompatible)?,
                _ => Vec::new(),
            };
            let regex = match &r.test {
                Test::Matches { pattern, .. } => Some(
                    regex::Regex::new(pattern)
                        .map_err(|e| incompatible(format!("bad regular expression: {e}")))?,
                ),
                _ => None,
            };
            Ok(CompiledRule {
                rule: r.clone(),
                index,
                kind,
                constants,
                regex,
            })
        })
        .collect()
}

fn typed_constant(kind: Kind, c: &str, pg_type: &str) -> Result<Typed, String> {
    rules_value::read(kind, c).ok_or_else(|| format!("'{c}' is not a value of type {pg_type}"))
}

/// The first rule the row breaks, if any. `row` holds the row's values in PostgreSQL's text
/// form, in the order of the columns the rules were compiled against.
pub fn check(rules: &[CompiledRule], row: &[Option<String>]) -> Result<(), Violation> {
    for r in rules {
        let value = row.get(r.index).and_then(|v| v.as_deref());
        if let Some(reason) = r.broken_by(value) {
            return Err(Violation {
                rule: r.rule.name.clone(),
                reason,
            });
        }
    }
    Ok(())
}

impl CompiledRule {
    /// Why `value` breaks the rule, or `None` if it passes.
    fn broken_by(&self, value: Option<&str>) -> Option<String> {
        let column = &self.rule.column;
        let check = &self.rule.check;
        let Some(v) = value else {
            return matches!(self.rule.test, Test::NotNull)
                .then(|| format!("{check} failed: {column} is NULL"));
        };
        // the reason is written only for a row that fails: checking must not allocate
        let failed = || Some(format!("{check} failed: {column} = {}", shorten(v)));
        match &self.rule.test {
            Test::NotNull => None,
            Test::Compare(op, _) => {
                let Some(typed) = rules_value::read(self.kind, v) else {
                    return Some(format!(
                        "{check}: {column} = {} cannot be read as its type",
                        shorten(v)
                    ));
                };
                let ord = rules_value::compare(&typed, &self.constants[0])?;
                (!op.holds(ord)).then(failed).flatten()
            }
            Test::In { negated, .. } => {
                let typed = rules_value::read(self.kind, v);
                let found = typed.is_some_and(|t| {
                    self.constants
                        .iter()
                        .any(|c| rules_value::compare(&t, c) == Some(Ordering::Equal))
                });
                (found == *negated).then(failed).flatten()
            }
            Test::Length(op, n) => {
                let len = v.chars().count();
                (!op.holds(len.cmp(n))).then(|| format!("{check} failed: length({column}) = {len}"))
            }
            Test::Matches { negated, .. } => {
                let m = self.regex.as_ref().is_some_and(|re| re.is_match(v));
                (m == *negated).then(failed).flatten()
            }
        }
    }
}

fn shorten(v: &str) -> String {
    const MAX: usize = 80;
    if v.chars().count() <= MAX {
        v.to_string()
    } else {
        format!("{}…", v.chars().take(MAX).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(check: &str, columns: &[(&str, &str)]) -> Vec<CompiledRule> {
        compile(&[Rule::parse(None, check).unwrap()], columns).unwrap()
    }

    fn row(v: &[Option<&str>]) -> Vec<Option<String>> {
        v.iter().map(|x| x.map(str::to_string)).collect()
    }

    #[test]
    fn the_seed_rules_hold_and_break() {
        let cols = [
            ("emp_id", "integer"),
            ("salary", "numeric(10,2)"),
            ("dob", "date"),
        ];
        let rules: Vec<Rule> = ["salary > 10000", "emp_id >= 0", "dob > 2007-01-01"]
            .iter()
            .map(|c| Rule::parse(None, c).unwrap())
            .collect();
        let c = compile(&rules, &cols).unwrap();
        assert_eq!(
            check(&c, &row(&[Some("1"), Some("10000.01"), Some("2010-05-01")])),
            Ok(())
        );
        let v = check(&c, &row(&[Some("1"), Some("10000.00"), Some("2010-05-01")])).unwrap_err();
        assert_eq!(v.rule, "salary > 10000");
        assert_eq!(v.reason, "salary > 10000 failed: salary = 10000.00");
        let v = check(&c, &row(&[Some("-3"), Some("20000"), Some("2010-05-01")])).unwrap_err();
        assert_eq!(v.rule, "emp_id >= 0");
        let v = check(&c, &row(&[Some("3"), Some("20000"), Some("2007-01-01")])).unwrap_err();
        assert_eq!(v.rule, "dob > 2007-01-01");
        // NULL passes a comparison, as in a CHECK constraint
        assert_eq!(check(&c, &row(&[Some("3"), None, None])), Ok(()));
    }

    #[test]
    fn in_lists_length_regex_and_not_null() {
        let cols = [
            ("type", "smallint"),
            ("name", "text"),
            ("active", "boolean"),
        ];
        let c = one("type in (1, 2)", &cols);
        assert!(check(&c, &row(&[Some("2"), None, None])).is_ok());
        assert!(check(&c, &row(&[Some("3"), None, None])).is_err());
        let c = one("type NOT IN (1)", &cols);
        assert!(check(&c, &row(&[Some("1"), None, None])).is_err());
        let c = one("length(name) <= 3", &cols);
        assert!(check(&c, &row(&[None, Some("äöü"), None])).is_ok());
        let v = check(&c, &row(&[None, Some("abcd"), None])).unwrap_err();
        assert_eq!(v.reason, "length(name) <= 3 failed: length(name) = 4");
        let c = one("name ~ '^[A-Z][a-z]+$'", &cols);
        assert!(check(&c, &row(&[None, Some("Ada"), None])).is_ok());
        assert!(check(&c, &row(&[None, Some("ada"), None])).is_err());
        let c = one("name !~ 'x'", &cols);
        assert!(check(&c, &row(&[None, Some("xy"), None])).is_err());
        let c = one("name is not null", &cols);
        assert_eq!(
            check(&c, &row(&[None, None, None])).unwrap_err().reason,
            "name is not null failed: name is NULL"
        );
        let c = one("active = true", &cols);
        assert!(check(&c, &row(&[None, None, Some("t")])).is_ok());
        assert!(check(&c, &row(&[None, None, Some("f")])).is_err());
        let c = one("name = 'O''Brien'", &cols);
        assert!(check(&c, &row(&[None, Some("O'Brien"), None])).is_ok());
    }

    #[test]
    fn malformed_rules_and_unknown_columns_are_errors() {
        for bad in [
            "",
            "salary >",
            "salary >> 3",
            "salary 3",
            "salary is null",
            "type in ()",
            "type in (1, 2",
            "length(name) < -1",
            "name ~ '('",
            "name ~ unquoted",
            "salary > 1 and",
            "name = 'open",
        ] {
            assert!(
                matches!(Rule::parse(None, bad), Err(RuleError::Malformed { .. })),
                "{bad:?} parsed"
            );
        }
        let r = Rule::parse(Some("floor"), "wage > 1").unwrap();
        assert_eq!(
            compile(&[r], &[("salary", "integer")]).unwrap_err(),
            RuleError::UnknownColumn {
                rule: "floor".into(),
                column: "wage".into()
            }
        );
        let r = Rule::parse(None, "salary > abc").unwrap();
        assert!(matches!(
            compile(&[r], &[("salary", "integer")]),
            Err(RuleError::Incompatible { .. })
        ));
        let r = Rule::parse(None, "doc > 1").unwrap();
        assert!(matches!(
            compile(&[r], &[("doc", "jsonb")]),
            Err(RuleError::Incompatible { .. })
        ));
    }

    #[test]
    fn quoted_column_names_keep_their_case() {
        let c = one("\"Salary\" > 5", &[("Salary", "bigint")]);
        assert!(check(&c, &row(&[Some("4")])).is_err());
    }
}
