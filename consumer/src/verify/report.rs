//! What `verify` prints on standard output, table by table: scripts read these lines.

use tunnel_shared::columns::ColumnComparison;
use tunnel_shared::config::TableConfig;
use tunnel_shared::reconcile::Differences;

/// The columns that differ, one line each; the columns kept by the policy and those whose
/// default is not compared, on a line of their own.
pub(super) fn print_columns(t: &TableConfig, cmp: &ColumnComparison) {
    if !cmp.differences.is_empty() {
        println!(
            "{}: {} column difference(s)",
            t.qualified(),
            cmp.differences.len()
        );
        for d in &cmp.differences {
            println!("  {d}");
        }
    }
    if !cmp.kept.is_empty() {
        println!(
            "{}: kept in the target after the source dropped them (on_schema_change = \"keep_dropped\"): {}",
            t.qualified(),
            cmp.kept.join(", ")
        );
    }
    if !cmp.defaults_not_compared.is_empty() {
        println!(
            "{}: defaults not compared (not constants, never copied to the target): {}",
            t.qualified(),
            cmp.defaults_not_compared.join(", ")
        );
    }
}

/// The rows' differences; `columns_differ`: the columns' were printed above; `scope`: what was
/// compared when not the whole table (put first in the parentheses).
pub(super) fn print_report(
    t: &TableConfig,
    d: &Differences,
    show: usize,
    columns_differ: bool,
    scope: Option<&str>,
) {
    let total = d.missing.len() + d.extra.len() + d.differing.len();
    let scope = scope.map(|s| format!("{s}; ")).unwrap_or_default();
    if total == 0 {
        println!(
            "{}: {} ({scope}{} rows compared, {} queries, {} ms)",
            t.qualified(),
            if columns_differ {
                "rows identical"
            } else {
                "identical"
            },
            d.rows_compared,
            d.queries,
            d.elapsed_ms
        );
        return;
    }
    println!(
        "{}: {total} difference(s): {} missing from the target, {} extra in the target, {} differing ({scope}{} rows compared, {} ms)",
        t.qualified(),
        d.missing.len(),
        d.extra.len(),
        d.differing.len(),
        d.rows_compared,
        d.elapsed_ms
    );
    for (what, keys) in [
        ("missing", &d.missing),
        ("extra", &d.extra),
        ("differing", &d.differing),
    ] {
        if keys.is_empty() {
            continue;
        }
        let shown: Vec<String> = keys
            .iter()
            .take(show)
            .map(|k| format!("({})", k.join(", ")))
            .collect();
        let more = if keys.len() > show {
            format!(" and {} more", keys.len() - show)
        } else {
            String::new()
        };
        println!("  {what}: {}{more}", shown.join(" "));
    }
}
