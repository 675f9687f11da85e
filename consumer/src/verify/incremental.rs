//! `verify --incremental`: the rows written since the last verify that found the table
//! identical, instead of the whole table.
//!
//! That verify recorded the transaction horizon of each server ([`tunnel_shared::versions`])
//! in the target's bookkeeping (`<bookkeeping>.verified`). This one lists, on the source and
//! on the target alike, the rows whose version was written since that side's horizon (key and
//! row hash, by `xmin`), and compares each listed key with the other side by key: a row that
//! differs now was written since on at least one side, so it is listed. Deletes leave no row
//! version: the keys of both sides are compared as well, by the same bisection as the whole
//! table but over a hash of the key alone, which reads no other column. The whole table is
//! compared instead (and the report says why) when nothing is recorded, when a horizon cannot
//! be used (too old, ahead of the server), or when more than
//! [`versions::LISTING_CAP`] rows were written on a side.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use tokio_postgres::Client;
use tunnel_shared::catalog::TableInfo;
use tunnel_shared::config::TableConfig;
use tunnel_shared::pg::{qualified, PgError};
use tunnel_shared::reconcile::{self, DiffOptions, Differences, OnTick, Side};
use tunnel_shared::versions::{self, Versions};

use crate::ddl;

/// The transaction horizons of both servers (epoch-extended ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Horizons {
    pub(super) source: i64,
    pub(super) target: i64,
}

/// The horizons of both servers now: a comparison that starts after this and finds the table
/// identical covers every row version older than them.
pub(super) async fn horizons_now(source: &Client, target: &Client) -> Result<Horizons, PgError> {
    Ok(Horizons {
        source: versions::horizon(source).await?,
        target: versions::horizon(target).await?,
    })
}

/// The horizons recorded by the last verify that found `t` identical; `None` when there is
/// none (or no bookkeeping table yet).
pub(super) async fn recorded(
    target: &Client,
    bookkeeping: &str,
    t: &TableConfig,
) -> Result<Option<Horizons>, PgError> {
    let what = "reading the last verify's horizons";
    let exists: bool = target
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&ddl::verified_table(bookkeeping)],
        )
        .await
        .map_err(PgError::query(what))?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let sql = format!(
        "SELECT source_horizon, target_horizon FROM {} WHERE source_schema = $1 AND source_table = $2 AND target_schema = $3 AND target_table = $4",
        ddl::verified_table(bookkeeping)
    );
    let row = target
        .query_opt(
            &sql,
            &[&t.schema, &t.name, &t.target_schema(), &t.target_name()],
        )
        .await
        .map_err(PgError::query(what))?;
    Ok(row.map(|r| Horizons {
        source: r.get(0),
        target: r.get(1),
    }))
}

/// Records `h` as the horizons of the last verify that found `t` identical (creating the
/// bookkeeping tables when they do not exist yet); `client` may write to the target.
pub(super) async fn record(
    client: &mut Client,
    bookkeeping: &str,
    t: &TableConfig,
    h: Horizons,
    whole_table: bool,
) -> Result<(), PgError> {
    ddl::ensure_bookkeeping(client, bookkeeping).await?;
    let sql = format!(
        "INSERT INTO {} (source_schema, source_table, target_schema, target_table, source_horizon, target_horizon, whole_table)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (source_schema, source_table, target_schema, target_table) DO UPDATE
         SET source_horizon = excluded.source_horizon, target_horizon = excluded.target_horizon,
             whole_table = excluded.whole_table, verified_at = now()",
        ddl::verified_table(bookkeeping)
    );
    client
        .execute(
            &sql,
            &[
                &t.schema,
                &t.name,
                &t.target_schema(),
                &t.target_name(),
                &h.source,
                &h.target,
                &whole_table,
            ],
        )
        .await
        .map_err(PgError::query("recording the verify's horizons"))?;
    Ok(())
}

/// What an incremental comparison came to.
pub(super) enum Outcome {
    /// The rows written since on either side, and the keys of both sides, compared.
    Compared {
        diff: Differences,
        /// Where the next incremental verify starts, should this one find the table identical.
        horizons: Horizons,
        /// Rows listed on the source and on the target.
        listed: (usize, usize),
    },
    /// The whole table must be compared instead, for this reason.
    WholeTable(String),
}

/// Compares the rows of `t` written since `since` on either side, and both sides' keys.
/// `tables`: the qualified, quoted names on the source and on the target.
pub(super) async fn compare(
    source: &mut Client,
    target: &mut Client,
    t: &TableInfo,
    tables: (&str, &str),
    since: Option<Horizons>,
    on_tick: Option<OnTick<'_>>,
) -> Result<Outcome, PgError> {
    let started = Instant::now();
    let Some(since) = since else {
        return Ok(Outcome::WholeTable(
            "no verify that found the table identical is recorded".into(),
        ));
    };
    let cap = versions::LISTING_CAP;
    let (src, h_src) = match versions::changed_since(source, t, tables.0, since.source, cap).await?
    {
        Versions::Changed { rows, horizon } => (rows, horizon),
        Versions::Unusable(why) => return Ok(Outcome::WholeTable(format!("source: {why}"))),
    };
    let (tgt, h_tgt) = match versions::changed_since(target, t, tables.1, since.target, cap).await?
    {
        Versions::Changed { rows, horizon } => (rows, horizon),
        Versions::Unusable(why) => return Ok(Outcome::WholeTable(format!("target: {why}"))),
    };
    let listed = (src.len(), tgt.len());
    let src: HashMap<Vec<String>, i64> = src.into_iter().map(|w| w.listed).collect();
    let tgt: HashMap<Vec<String>, i64> = tgt.into_iter().map(|w| w.listed).collect();
    let src_side = Side {
        client: source,
        table: tables.0.to_string(),
    };
    let tgt_side = Side {
        client: target,
        table: tables.1.to_string(),
    };
    let mut found = Found::default();
    // listed on both sides: compared as listed
    for (k, h) in &src {
        if tgt.get(k).is_some_and(|h2| h2 != h) {
            found.differing.insert(k.clone());
        }
    }
    // listed on one side: looked up on the other
    let only = |a: &HashMap<Vec<String>, i64>, b: &HashMap<Vec<String>, i64>| {
        a.iter()
            .filter(|(k, _)| !b.contains_key(*k))
            .map(|(k, h)| (k.clone(), *h))
            .collect::<Vec<_>>()
    };
    let d = reconcile::compare_listed(t, &tgt_side, &only(&src, &tgt)).await?;
    found.add(&d, false);
    let d = reconcile::compare_listed(t, &src_side, &only(&tgt, &src)).await?;
    found.add(&d, true);
    // deletes on either side: the keys of both
    let keys_only = DiffOptions {
        keys_only: true,
        ..DiffOptions::default()
    };
    let d = reconcile::diff_reporting(t, src_side, tgt_side, keys_only, on_tick).await?;
    found.add(&d, false);
    let mut diff = found.into_differences();
    diff.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(Outcome::Compared {
        diff,
        horizons: Horizons {
            source: h_src,
            target: h_tgt,
        },
        listed,
    })
}

/// The differences found by the steps of an incremental comparison, each key once.
#[derive(Default)]
struct Found {
    missing: BTreeSet<Vec<String>>,
    extra: BTreeSet<Vec<String>>,
    differing: BTreeSet<Vec<String>>,
    queries: u64,
    rows_compared: u64,
}

impl Found {
    /// Adds a step's differences; `reversed`: the step looked the target's rows up in the
    /// source, so its missing keys are extra in the target.
    fn add(&mut self, d: &Differences, reversed: bool) {
        let (missing, extra) = if reversed {
            (&mut self.extra, &mut self.missing)
        } else {
            (&mut self.missing, &mut self.extra)
        };
        missing.extend(d.missing.iter().cloned());
        extra.extend(d.extra.iter().cloned());
        self.differing.extend(d.differing.iter().cloned());
        self.queries += d.queries;
        self.rows_compared += d.rows_compared;
    }

    fn into_differences(self) -> Differences {
        Differences {
            missing: self.missing.into_iter().collect(),
            extra: self.extra.into_iter().collect(),
            differing: self.differing.into_iter().collect(),
            queries: self.queries,
            rows_compared: self.rows_compared,
            elapsed_ms: 0,
        }
    }
}

/// The qualified, quoted names of `t` on the source and of its replica on the target.
pub(super) fn names(t: &TableConfig) -> (String, String) {
    (
        qualified(&t.schema, &t.name),
        qualified(t.target_schema(), t.target_name()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(ks: &[&str]) -> Vec<Vec<String>> {
        ks.iter().map(|k| vec![k.to_string()]).collect()
    }

    #[test]
    fn steps_add_up_each_key_once_and_reversed_lookups_swap_sides() {
        let mut f = Found::default();
        // the source's listed rows looked up in the target
        f.add(
            &Differences {
                missing: keys(&["9001"]),
                differing: keys(&["7"]),
                queries: 1,
                rows_compared: 3,
                ..Differences::default()
            },
            false,
        );
        // the target's listed rows looked up in the source: 42 is only in the target
        f.add(
            &Differences {
                missing: keys(&["42"]),
                differing: keys(&["8"]),
                queries: 1,
                rows_compared: 2,
                ..Differences::default()
            },
            true,
        );
        // the keys of both sides: 9001 again, 42 again, and 5 deleted from the target
        f.add(
            &Differences {
                missing: keys(&["5", "9001"]),
                extra: keys(&["42"]),
                queries: 4,
                rows_compared: 10,
                ..Differences::default()
            },
            false,
        );
        let d = f.into_differences();
        assert_eq!(d.missing, keys(&["5", "9001"]));
        assert_eq!(d.extra, keys(&["42"]));
        assert_eq!(d.differing, keys(&["7", "8"]));
        assert_eq!((d.queries, d.rows_compared), (6, 15));
    }
}
