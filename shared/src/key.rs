//! A row's key as its columns' values in PostgreSQL's text form, and the JSON form of such a
//! key (an array of strings and nulls, `["7"]`, `["a", null]`): what the DLQ's `tunnel.key`
//! header, the consumer's parked keys and `dlq replay --key` use.

/// A key's column values in PostgreSQL's text form (`None` for NULL).
pub type KeyText = Vec<Option<String>>;

/// The key as a JSON array of its columns' text values.
pub fn to_json(key: &[Option<String>]) -> String {
    serde_json::Value::Array(
        key.iter()
            .map(|v| match v {
                Some(s) => serde_json::Value::String(s.clone()),
                None => serde_json::Value::Null,
            })
            .collect(),
    )
    .to_string()
}

/// A key written by [`to_json`]; `None` for anything else (not JSON, not an array, an element
/// that is neither a string nor null).
pub fn from_json(text: &str) -> Option<KeyText> {
    let json: serde_json::Value = serde_json::from_str(text).ok()?;
    json.as_array()?
        .iter()
        .map(|v| match v {
            serde_json::Value::Null => Some(None),
            serde_json::Value::String(s) => Some(Some(s.clone())),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_other_json() {
        let k: KeyText = vec![Some("7".into()), None, Some("a\"b,c".into())];
        assert_eq!(to_json(&k), r#"["7",null,"a\"b,c"]"#);
        assert_eq!(from_json(&to_json(&k)), Some(k));
        assert_eq!(from_json("[]"), Some(vec![]));
        for bad in ["", "7", "{}", "[1]", "[true]", "[[\"a\"]]", "[\"a\""] {
            assert_eq!(from_json(bad), None, "{bad}");
        }
    }
}
