//! What a PostgreSQL type name may look like where we paste one into SQL.

/// Whether `t` has the shape of a type name as `format_type` writes it: one identifier (plain or
/// double-quoted, optionally schema-qualified) with an optional modifier (`(12,3)`), one of
/// PostgreSQL's names of several words, each optionally an array (`[]`). `pg.type` is pasted
/// into the target's DDL and casts, and anyone who can register a schema writes it: anything
/// else (a clause, a second statement, a comment) is refused.
pub fn is_type_name(t: &str) -> bool {
    static TYPE_NAME: std::sync::LazyLock<Option<regex::Regex>> = std::sync::LazyLock::new(|| {
        let ident = r#"(?:[a-z_][a-z0-9_$]*|"(?:[^"\x00]|"")+")"#;
        let p = r"(?:\(\d+\))?";
        let words = [
            "double precision".to_string(),
            format!("(?:character|bit) varying{p}"),
            format!("(?:timestamp|time){p} with(?:out)? time zone"),
            format!(
                "interval(?: (?:year|month|day|hour|minute|second)(?: to (?:month|hour|minute|second))?)?{p}"
            ),
            format!(r"{ident}(?:\.{ident})?(?:\(\d+(?:, ?\d+)?\))?"),
        ];
        regex::Regex::new(&format!(r"^(?:{})(?:\[\d*\])*$", words.join("|"))).ok()
    });
    TYPE_NAME.as_ref().is_some_and(|re| re.is_match(t))
}
