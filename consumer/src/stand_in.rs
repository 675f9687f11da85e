//! Columns of a type the target does not have (an enum, a domain, a composite type, an
//! extension's type such as `citext` or `hstore`): the replica holds them as `text` (`text[]`
//! for an array of one), in PostgreSQL's text form of the value, which is what the events
//! carry for such types. A user who wants the type itself creates it in the target before the
//! table is created: it is then used as it is.
//!
//! Each type name is looked up once per process (`to_regtype`, a parameter, never pasted).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_postgres::Client;
use tunnel_shared::columns::ColumnDef;
use tunnel_shared::config::TargetConfig;
use tunnel_shared::default_expr::constant_default;
use tunnel_shared::pg::{self, PgError, Session};
use tunnel_shared::schema::FieldShape;

/// The stand-in for `pg_type` (as `format_type` writes it): `text`, with as many array
/// dimensions.
fn text_like(pg_type: &str) -> String {
    let dims = pg_type.matches("[]").count();
    format!("text{}", "[]".repeat(dims))
}

/// The default of a column of type `pg_type` for its stand-in: the same constant as text
/// (`'ok'::mood` gives `'ok'::text`, `5::posint` gives `'5'::text`), none for `NULL` or a
/// default of another shape.
fn text_default(default: &str, pg_type: &str) -> Option<String> {
    let constant = constant_default(default)?;
    let value = constant
        .strip_suffix(pg_type)
        .and_then(|v| v.strip_suffix("::"))
        .unwrap_or(constant);
    let value = value.trim_matches(|c| c == '(' || c == ')');
    if value.eq_ignore_ascii_case("null") {
        return None;
    }
    let cast = text_like(pg_type);
    if value.starts_with('\'') {
        // a quoted literal (constant_default checked its quotes), cast to something else
        // would have kept a suffix: the literal alone is left
        let end = value.rfind('\'')?;
        return Some(format!("{}::{cast}", &value[..=end]));
    }
    // a number, true or false: no quote inside
    (!value.contains('\'')).then(|| format!("'{value}'::{cast}"))
}

/// `field` as its stand-in column: `text`, its default as text, its nullability kept.
pub(crate) fn as_text(field: &FieldShape) -> FieldShape {
    FieldShape {
        pg_type: text_like(&field.pg_type),
        default: field
            .default
            .as_deref()
            .and_then(|d| text_default(d, &field.pg_type)),
        ..field.clone()
    }
}

/// Which of `names` (type names) the database of `client` does not have.
pub(crate) async fn missing(client: &Client, names: &[&str]) -> Result<HashSet<String>, PgError> {
    if names.is_empty() {
        return Ok(HashSet::new());
    }
    let rows = client
        .query(
            "SELECT n FROM unnest($1::text[]) AS n WHERE to_regtype(n) IS NULL",
            &[&names],
        )
        .await
        .map_err(PgError::query("looking up the column types in the target"))?;
    rows.iter()
        .map(|r| r.try_get::<_, String>(0))
        .collect::<Result<_, _>>()
        .map_err(PgError::query("looking up the column types in the target"))
}

/// The source's columns `columns` as the replica in the database of `target` should hold
/// them: a type it does not have as its stand-in (what `verify` expects).
pub(crate) async fn held_by(
    target: &Client,
    columns: Vec<ColumnDef>,
) -> Result<Vec<ColumnDef>, PgError> {
    let names: Vec<&str> = columns.iter().map(|c| c.type_name.as_str()).collect();
    let absent = missing(target, &names).await?;
    Ok(columns
        .into_iter()
        .map(|c| {
            if !absent.contains(&c.type_name) {
                return c;
            }
            ColumnDef {
                default: c
                    .default
                    .as_deref()
                    .and_then(|d| text_default(d, &c.type_name)),
                type_name: text_like(&c.type_name),
                ..c
            }
        })
        .collect())
}

/// The target's types, looked up once each through a connection of their own.
pub(crate) struct TargetTypes {
    url: String,
    session: Session,
    client: Mutex<Option<Client>>,
    /// Per type name, whether the target has it.
    known: Mutex<HashMap<String, bool>>,
}

impl TargetTypes {
    /// The types of the target `target` names; connects at the first look-up.
    pub(crate) fn new(target: &TargetConfig) -> Self {
        Self {
            url: target.url.clone(),
            session: Session {
                application_name: "data-tunnel-types".into(),
                statement_timeout: Duration::from_millis(target.statement_timeout_ms),
                lock_timeout: Duration::ZERO,
                read_only: true,
                canonical_text: false,
            },
            client: Mutex::new(None),
            known: Mutex::new(HashMap::new()),
        }
    }

    /// `fields` as the target can hold them: a field whose type the target does not have
    /// becomes its stand-in ([`as_text`]).
    pub(crate) async fn fit(&self, fields: Vec<FieldShape>) -> Result<Vec<FieldShape>, PgError> {
        let mut known = self.known.lock().await;
        let unknown: Vec<&str> = fields
            .iter()
            .map(|f| f.pg_type.as_str())
            .filter(|t| !known.contains_key(*t))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if !unknown.is_empty() {
            let mut client = self.client.lock().await;
            if client.as_ref().is_none_or(Client::is_closed) {
                *client = Some(pg::connect(&self.url, &self.session).await?);
            }
            let Some(c) = client.as_ref() else {
                unreachable!("connected above")
            };
            let absent = missing(c, &unknown).await?;
            for t in unknown {
                known.insert(t.to_string(), !absent.contains(t));
            }
        }
        Ok(fields
            .into_iter()
            .map(|f| match known.get(&f.pg_type) {
                Some(false) => {
                    tracing::debug!(column = %f.column, pg_type = %f.pg_type, "the target has no such type: the column is held as text");
                    as_text(&f)
                }
                _ => f,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stand_ins_keep_arrays_and_constant_defaults() {
        assert_eq!(text_like("mood"), "text");
        assert_eq!(text_like("public.mood[]"), "text[]");
        assert_eq!(text_like("\"Mood\"[][]"), "text[][]");
        assert_eq!(
            text_default("'ok'::mood", "mood").as_deref(),
            Some("'ok'::text")
        );
        assert_eq!(
            text_default("'it''s'::public.mood", "public.mood").as_deref(),
            Some("'it''s'::text")
        );
        assert_eq!(text_default("5", "posint").as_deref(), Some("'5'::text"));
        assert_eq!(
            text_default("(-5)::posint", "posint").as_deref(),
            Some("'-5'::text")
        );
        assert_eq!(
            text_default("'{a,b}'::mood[]", "mood[]").as_deref(),
            Some("'{a,b}'::text[]")
        );
        assert_eq!(text_default("NULL::mood", "mood"), None);
        assert_eq!(text_default("now()", "mood"), None);
        let f = FieldShape {
            field: "m".into(),
            column: "m".into(),
            pg_type: "mood".into(),
            nullable: false,
            scale: None,
            attnum: Some(3),
            default: Some("'ok'::mood".into()),
        };
        let t = as_text(&f);
        assert_eq!((t.pg_type.as_str(), t.nullable), ("text", false));
        assert_eq!(t.default.as_deref(), Some("'ok'::text"));
    }
}
