use tunnel_shared::config::SchemaChangePolicy::{Evolve, KeepDropped};

use super::*;

fn field(column: &str, attnum: Option<i16>, pg_type: &str, nullable: bool) -> FieldShape {
    FieldShape {
        field: column.into(),
        column: column.into(),
        pg_type: pg_type.into(),
        nullable,
        scale: None,
        attnum,
        default: None,
    }
}

fn col(name: &str, attnum: Option<i16>, pg_type: &str, nullable: bool) -> TargetColumn {
    TargetColumn {
        name: name.into(),
        attnum,
        pg_type: pg_type.into(),
        nullable,
        default: None,
        in_key: false,
    }
}

/// `media` as the target holds it: id (key), s3_path, format, price.
fn media() -> Vec<TargetColumn> {
    vec![
        TargetColumn {
            in_key: true,
            ..col("id", Some(1), "integer", false)
        },
        col("s3_path", Some(2), "character varying(1024)", true),
        col("format", Some(3), "character varying(5)", true),
        col("price", Some(4), "numeric(10,2)", true),
    ]
}

/// The schema of `media` as it is.
fn media_fields() -> Vec<FieldShape> {
    media()
        .iter()
        .map(|c| field(&c.name, c.attnum, &c.pg_type, c.nullable))
        .collect()
}

fn steps(current: &[TargetColumn], writer: &[FieldShape]) -> Vec<Step> {
    diff(current, writer, Evolve).unwrap().steps
}

fn s(x: &str) -> String {
    x.to_string()
}

#[test]
fn the_same_schema_changes_nothing_and_keeps_the_mapping() {
    let e = diff(&media(), &media_fields(), Evolve).unwrap();
    assert_eq!(e.steps, []);
    assert_eq!(e.columns, media());
}

#[test]
fn a_new_attnum_is_a_new_column_not_null_only_with_a_default() {
    let mut w = media_fields();
    w.push(FieldShape {
        default: Some(s("'n/a'::text")),
        ..field("label", Some(5), "text", false)
    });
    w.push(field("note", Some(6), "text", false));
    w.push(field("extra", Some(7), "integer", true));
    let e = diff(&media(), &w, Evolve).unwrap();
    assert_eq!(
        e.steps,
        [
            Step::Add {
                column: s("label"),
                pg_type: s("text"),
                default: Some(s("'n/a'::text")),
                not_null: true
            },
            // NOT NULL without a default: the rows already there would have nothing
            Step::Add {
                column: s("note"),
                pg_type: s("text"),
                default: None,
                not_null: false
            },
            Step::Add {
                column: s("extra"),
                pg_type: s("integer"),
                default: None,
                not_null: false
            },
        ]
    );
    let label = &e.columns[4];
    assert_eq!((label.attnum, label.nullable), (Some(5), false));
    assert!(e.columns[5].nullable);
}

#[test]
fn the_same_attnum_under_another_name_is_a_rename() {
    let mut w = media_fields();
    w[1].column = s("path");
    let e = diff(&media(), &w, Evolve).unwrap();
    assert_eq!(
        e.steps,
        [Step::Rename {
            from: s("s3_path"),
            to: s("path")
        }]
    );
    assert_eq!(e.columns[1].name, "path");
    assert_eq!(e.columns[1].attnum, Some(2));
}

#[test]
fn swapped_names_go_through_temporary_ones() {
    let mut w = media_fields();
    w[1].column = s("format");
    w[2].column = s("s3_path");
    let rename = |a: &str, b: &str| Step::Rename {
        from: s(a),
        to: s(b),
    };
    assert_eq!(
        steps(&media(), &w),
        [
            rename("s3_path", "tunnel_renaming_1"),
            rename("format", "tunnel_renaming_2"),
            rename("tunnel_renaming_1", "format"),
            rename("tunnel_renaming_2", "s3_path"),
        ]
    );
}

#[test]
fn widened_types_are_altered() {
    let mut w = media_fields();
    w[0].pg_type = s("bigint");
    w[2].pg_type = s("character varying(50)");
    w[3].pg_type = s("numeric(12,2)");
    let alter = |c: &str, from: &str, to: &str| Step::AlterType {
        column: s(c),
        from: s(from),
        to: s(to),
    };
    assert_eq!(
        steps(&media(), &w),
        [
            alter("id", "integer", "bigint"),
            alter("format", "character varying(5)", "character varying(50)"),
            alter("price", "numeric(10,2)", "numeric(12,2)"),
        ]
    );
}

#[test]
fn a_retyped_column_with_a_default_gets_it_again_after() {
    let mut current = media();
    current[2].default = Some(s("'jpg'::character varying"));
    let mut w = media_fields();
    w[2].pg_type = s("text");
    w[2].default = Some(s("'jpg'::text"));
    assert_eq!(
        steps(&current, &w),
        [
            Step::DropDefault {
                column: s("format")
            },
            Step::AlterType {
                column: s("format"),
                from: s("character varying(5)"),
                to: s("text")
            },
            Step::SetDefault {
                column: s("format"),
                default: s("'jpg'::text")
            },
        ]
    );
}

#[test]
fn nullability_and_defaults_follow_but_the_key_stays_not_null() {
    let mut current = media();
    current[3].default = Some(s("0"));
    let mut w = media_fields();
    w[0].nullable = true; // the key: ignored
    w[1].nullable = false;
    w[2].default = Some(s("'png'::character varying"));
    w[3].nullable = true;
    let got = steps(&current, &w);
    assert_eq!(
        got,
        [
            Step::SetDefault {
                column: s("format"),
                default: s("'png'::character varying")
            },
            Step::DropDefault { column: s("price") },
            // SET NOT NULL, which the rows may refuse, last
            Step::SetNotNull {
                column: s("s3_path")
            },
        ]
    );
    let mut w2 = media_fields();
    w2[3].nullable = false;
    current[3].nullable = false;
    w2[3].nullable = true;
    assert_eq!(
        steps(&current, &w2),
        [
            Step::DropDefault { column: s("price") },
            Step::DropNotNull { column: s("price") }
        ]
    );
}

#[test]
fn a_gone_attnum_is_dropped_or_kept_by_policy() {
    let mut w = media_fields();
    w.remove(2);
    assert_eq!(
        steps(&media(), &w),
        [Step::Drop {
            column: s("format")
        }]
    );
    let mut current = media();
    current[2].nullable = false;
    current[2].default = Some(s("'jpg'::character varying"));
    let e = diff(&current, &w, KeepDropped).unwrap();
    assert_eq!(
        e.steps,
        [
            Step::DropNotNull {
                column: s("format")
            },
            Step::DropDefault {
                column: s("format")
            }
        ]
    );
    let kept = e.columns.iter().find(|c| c.name == "format").unwrap();
    assert!(kept.nullable && kept.default.is_none());
    assert_eq!(kept.attnum, Some(3));
    assert_eq!(e.columns.len(), 4);
}

#[test]
fn a_kept_column_steps_aside_for_a_new_one_of_its_name() {
    // format dropped and added again: a new attnum
    let mut w = media_fields();
    w[2].attnum = Some(9);
    let e = diff(&media(), &w, KeepDropped).unwrap();
    assert_eq!(
        e.steps,
        [
            Step::Rename {
                from: s("format"),
                to: s("format_dropped_2")
            },
            Step::Add {
                column: s("format"),
                pg_type: s("character varying(5)"),
                default: None,
                not_null: false
            },
        ]
    );
    let e = diff(&media(), &w, Evolve).unwrap();
    assert_eq!(
        e.steps[0],
        Step::Drop {
            column: s("format")
        }
    );
}

#[test]
fn a_key_column_that_goes_is_refused() {
    let w = media_fields()[1..].to_vec();
    let err = diff(&media(), &w, Evolve).unwrap_err();
    assert_eq!(err, EvolveError::KeyColumnGone { column: s("id") });
}

#[test]
fn schemas_without_attnums_match_by_name() {
    let w: Vec<FieldShape> = media_fields()
        .into_iter()
        .map(|f| FieldShape { attnum: None, ..f })
        .collect();
    assert_eq!(steps(&media(), &w), []);
    // a table adopted by name (no attnums) gets them from the first schema that has them
    let adopted: Vec<TargetColumn> = media()
        .into_iter()
        .map(|c| TargetColumn { attnum: None, ..c })
        .collect();
    let e = diff(&adopted, &media_fields(), Evolve).unwrap();
    assert_eq!(e.steps, []);
    assert_eq!(e.columns, media());
    // a field without attnum that the table lacks is new
    let mut w2 = w.clone();
    w2.push(field("label", None, "text", true));
    let e = diff(&media(), &w2, Evolve).unwrap();
    assert!(matches!(&e.steps[..], [Step::Add { column, .. }] if column == "label"));
    assert_eq!(e.columns[4].attnum, None);
}

#[test]
fn older_schemas_map_by_attnum_to_renamed_columns_and_skip_dropped_ones() {
    // the target after s3_path became path, format was dropped and label was added
    let mut target = media();
    target[1].name = s("path");
    target.remove(2);
    target.push(col("label", Some(5), "text", true));
    let old = media_fields();
    assert_eq!(
        project(&target, &old),
        [Some(0), Some(1), None, Some(2)],
        "s3_path goes to path, format nowhere; label is not in the old schema"
    );
    // an old schema without attnums: by name
    let no_attnum: Vec<FieldShape> = old
        .iter()
        .map(|f| FieldShape {
            attnum: None,
            ..f.clone()
        })
        .collect();
    assert_eq!(project(&target, &no_attnum), [Some(0), None, None, Some(2)]);
    assert_eq!(project(&[], &old), [None, None, None, None]);
}

/// An event of an older schema whose column changed type since (the varchar `format` the
/// source turned into int4, followed by `tunnel-producer resync`): its value may not fit the
/// replica any more, and the rows it wrote come again in the new type.
#[test]
fn columns_retyped_since_an_older_schema_are_named() {
    let old = media_fields();
    let mut now = media();
    assert!(retyped_since(&now, &old).is_empty(), "same schema");
    now[2].pg_type = s("integer");
    assert_eq!(retyped_since(&now, &old), [s("format")]);
    // matched by attnum: a rename since is not a change of type
    now[2] = col("kind", Some(3), "character varying(5)", true);
    assert!(retyped_since(&now, &old).is_empty());
    // a column the schema does not know, or a field whose column is gone, is no retyping
    assert!(retyped_since(&now[..2], &old).is_empty());
    // nothing read: nothing to compare
    assert!(retyped_since(&[], &old).is_empty());
}
