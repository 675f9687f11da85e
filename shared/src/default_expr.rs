//! Which column defaults the target may copy from the source: constants only.
//!
//! A source column's default travels in its schema (`pg.default`, as `pg_get_expr` prints it)
//! and anyone who can register a schema writes it, while the consumer pastes it into the
//! target's DDL: [`constant_default`] accepts a small grammar of constants and nothing else.
//! An expression that is not a constant (`now()`, `nextval('media_id_seq'::regclass)`,
//! `(1 + 2)`, ...) is never copied. The target does not need it: it receives every value from
//! the source, the defaults included, so a default in the target only serves events written
//! before the column existed. And such an expression could be evaluated differently in the
//! target (another clock, another sequence, a function that does not exist there).

use crate::type_name::is_type_name;

/// Longest default copied, in bytes: a literal longer than this is not a default anyone types.
const MAX_LEN: usize = 4096;

/// Literals PostgreSQL reads differently at each evaluation (`'now'::timestamp` is the time of
/// the DDL): not constants, although they have the shape of one.
const MOVING_LITERALS: &[&str] = &["now", "today", "tomorrow", "yesterday"];

/// `expr` when it is a constant the target may copy (see the module's doc), else `None`:
///
/// - a quoted literal (`''` for a quote inside; no backslash, which a target with
///   `standard_conforming_strings = off` would read as an escape), optionally cast once,
///   `::<type name>` (see [`is_type_name`]);
/// - a number: digits with an optional fraction and exponent, optionally negative, optionally
///   in one pair of parentheses, optionally cast;
/// - `true` or `false`;
/// - `NULL`, optionally cast.
pub fn constant_default(expr: &str) -> Option<&str> {
    if expr.is_empty() || expr.len() > MAX_LEN {
        return None;
    }
    let rest = if let Some(rest) = expr.strip_prefix('\'') {
        let (content, rest) = literal(rest)?;
        let word = content.trim().to_ascii_lowercase();
        if MOVING_LITERALS.contains(&word.as_str()) {
            return None;
        }
        rest
    } else if let Some(rest) = strip_keyword(expr, "null") {
        rest
    } else if ["true", "false"]
        .iter()
        .any(|w| strip_keyword(expr, w) == Some(""))
    {
        ""
    } else {
        number(expr)?
    };
    match rest {
        "" => Some(expr),
        cast => cast
            .strip_prefix("::")
            .filter(|t| is_type_name(t))
            .map(|_| expr),
    }
}

/// `s` without the keyword `word` at its start (any case), when what follows is not part of
/// a longer word.
fn strip_keyword<'a>(s: &'a str, word: &str) -> Option<&'a str> {
    let head = s.get(..word.len())?;
    let rest = &s[word.len()..];
    (head.eq_ignore_ascii_case(word)
        && !rest.starts_with(|c: char| c.is_alphanumeric() || c == '_'))
    .then_some(rest)
}

/// The content of a quoted literal whose opening quote is already read, and what follows its
/// closing quote; `None` when it is not closed or holds a backslash or a NUL.
fn literal(s: &str) -> Option<(String, &str)> {
    let mut content = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\'' => {
                if s[i + 1..].starts_with('\'') {
                    content.push('\'');
                    chars.next();
                } else {
                    return Some((content, &s[i + 1..]));
                }
            }
            '\\' | '\0' => return None,
            c => content.push(c),
        }
    }
    None
}

/// What follows a number (`1`, `-2.5`, `(-1)`, `1e-3`, `(0.5)`), or `None` when `s` does not
/// start with one.
fn number(s: &str) -> Option<&str> {
    let (inner, parens) = match s.strip_prefix('(') {
        Some(r) => (r, true),
        None => (s, false),
    };
    let unsigned = inner.strip_prefix('-').unwrap_or(inner);
    let digits = |t: &str| t.len() - t.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let mut n = digits(unsigned);
    if n == 0 {
        return None;
    }
    if let Some(frac) = unsigned[n..].strip_prefix('.') {
        let f = digits(frac);
        if f == 0 {
            return None;
        }
        n += 1 + f;
    }
    if let Some(exp) = unsigned[n..].strip_prefix(['e', 'E']) {
        let signed = exp.strip_prefix(['+', '-']).unwrap_or(exp);
        let e = digits(signed);
        if e == 0 {
            return None;
        }
        n += 1 + (exp.len() - signed.len()) + e;
    }
    let rest = &unsigned[n..];
    if parens {
        rest.strip_prefix(')')
    } else {
        Some(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::constant_default;

    #[test]
    fn constants_are_copied() {
        for ok in [
            "'n/a'::text",
            "'n/a'::character varying",
            "'it''s'::text",
            "'a'''",
            "''::text",
            "'x'",
            "'{1,2}'::integer[]",
            "'2024-01-01'::date",
            "'a; DROP TABLE x; --'::text",
            "'/* not a comment */'::text",
            "'$$'::text",
            "0",
            "42",
            "-1",
            "(-1)",
            "(0.5)",
            "1.25",
            "1e10",
            "(-1.5E-3)",
            "'-1'::integer",
            "0::bigint",
            "true",
            "false",
            "TRUE",
            "NULL",
            "NULL::text",
            "'x'::\"My Type\"",
            "'happy'::public.mood",
            "'1.50'::numeric(12,2)",
        ] {
            assert_eq!(constant_default(ok), Some(ok), "{ok}");
        }
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "",
            "now()",
            "nextval('media_id_seq'::regclass)",
            "CURRENT_TIMESTAMP",
            "(1 + 2)",
            "1 + 2",
            "'a'); DROP TABLE x; --",
            "'a'::text); DROP TABLE x; --",
            "'a'::text; DROP TABLE x",
            "'a' || 'b'",
            "'unbalanced",
            "'a''",
            "'a''''",
            "unbalanced'",
            "'a' -- comment",
            "'a'::text -- comment",
            "0 /* comment */",
            "$$a$$",
            "$tag$a$tag$::text",
            "E'a'",
            "'a\\'; DROP TABLE x; --'",
            "'a\0'",
            "'now'::timestamp without time zone",
            "'today'::date",
            "('now'::text)::date",
            "'a'::text::varchar",
            "'a'::",
            "'a'::text NOT NULL",
            "'a'::integer); DROP TABLE x",
            "((1))",
            "(1",
            "1)",
            "--1",
            "1.",
            ".5",
            "1e",
            "truex",
            "true::boolean; DROP TABLE x",
            "NULLIF(1, 2)",
            "nullx",
            "1 ",
            " 1",
            "true\n",
            "\"x\"",
            "x",
        ] {
            assert_eq!(constant_default(bad), None, "{bad:?}");
        }
        assert_eq!(constant_default(&format!("'{}'", "a".repeat(5000))), None);
    }
}
