//! Choosing DLQ entries: the filters shared by `dlq show` and `dlq replay`.

use tunnel_shared::key::KeyText;

use super::read::DlqEntry;

#[derive(Debug, Default, Clone)]
pub(crate) struct Filter {
    /// An error class (`rule`, `wire_format`...) or a rule's name.
    pub(crate) reason: Option<String>,
    /// A DLQ partition.
    pub(crate) partition: Option<i32>,
    /// DLQ offsets, both ends included.
    pub(crate) offsets: Option<(i64, i64)>,
    /// The decoded key.
    pub(crate) key: Option<KeyText>,
}

impl Filter {
    pub(crate) fn matches(&self, e: &DlqEntry) -> bool {
        self.reason
            .as_deref()
            .is_none_or(|r| e.class() == r || e.rule() == Some(r))
            && self.partition.is_none_or(|p| e.partition == p)
            && self
                .offsets
                .is_none_or(|(from, to)| (from..=to).contains(&e.offset))
            && self
                .key
                .as_ref()
                .is_none_or(|k| e.key_text().as_ref() == Some(k))
    }
}

/// `7`, `7..12` or `7..` (both ends included).
pub(crate) fn parse_offsets(s: &str) -> Result<(i64, i64), String> {
    let bad = || format!("offsets '{s}': expected N, N..M or N..");
    match s.split_once("..") {
        None => {
            let n = s.trim().parse().map_err(|_| bad())?;
            Ok((n, n))
        }
        Some((a, b)) => {
            let from = a.trim().parse().map_err(|_| bad())?;
            let to = if b.trim().is_empty() {
                i64::MAX
            } else {
                b.trim().parse().map_err(|_| bad())?
            };
            if to < from {
                return Err(bad());
            }
            Ok((from, to))
        }
    }
}

/// A key as a JSON array of its columns' text values (`["7"]`, `["a", "1"]`), or for a
/// single-column key its value alone (`7`).
pub(crate) fn parse_key(s: &str) -> Result<KeyText, String> {
    let t = s.trim();
    if !t.starts_with('[') {
        return Ok(vec![Some(t.to_string())]);
    }
    let json: serde_json::Value =
        serde_json::from_str(t).map_err(|e| format!("key '{s}' is not a JSON array: {e}"))?;
    json.as_array()
        .ok_or_else(|| format!("key '{s}' is not a JSON array"))?
        .iter()
        .map(|v| match v {
            serde_json::Value::Null => Ok(None),
            serde_json::Value::String(x) => Ok(Some(x.clone())),
            serde_json::Value::Number(n) => Ok(Some(n.to_string())),
            serde_json::Value::Bool(b) => Ok(Some(if *b { "t" } else { "f" }.to_string())),
            other => Err(format!("key '{s}': {other} is not a column value")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_and_keys_parse() {
        assert_eq!(parse_offsets("7"), Ok((7, 7)));
        assert_eq!(parse_offsets("7..12"), Ok((7, 12)));
        assert_eq!(parse_offsets("7.."), Ok((7, i64::MAX)));
        assert!(parse_offsets("12..7").is_err());
        assert!(parse_offsets("x").is_err());
        assert_eq!(parse_key("7"), Ok(vec![Some("7".into())]));
        assert_eq!(
            parse_key(r#"["a", 1]"#),
            Ok(vec![Some("a".into()), Some("1".into())])
        );
        assert!(parse_key("[{}]").is_err());
    }
}
