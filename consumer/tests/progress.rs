//! The snapshot's progress bar on a terminal: run under a pseudo-terminal (`script`), the
//! producer draws a bar, and every log line printed meanwhile stands on a line of its own
//! instead of being written through the bar.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure is a panic

use std::time::Duration;

use tunnel_shared::testkit::{self as tk, Databases};

/// `text` with a line break for each ANSI escape sequence (colours, cursor moves, line
/// clears): what the terminal shows on one line without one is one segment.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        out.push('\n');
        if chars.peek() == Some(&'[') {
            chars.next();
            // parameters, then one final byte in @..~
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn log_lines_print_above_the_snapshot_bar_never_through_it() {
    let dbs = Databases::create().await;
    let src = dbs.source().await;
    src.batch_execute(
        "CREATE TABLE media (id serial PRIMARY KEY, s3_path varchar(1024), format varchar(5), type smallint);
         INSERT INTO media (s3_path, format, type) SELECT '/p/' || i, 'jpg', 1 FROM generate_series(1, 400000) i;
         ANALYZE media",
    )
    .await
    .unwrap();
    let config = tk::write_config(&dbs, &tk::unique("bar"), &tk::unique("g"), &["media"], "");
    // small chunks, and a ceiling on the rows read per second: the snapshot lasts 13 s at
    // least, so that its progress log line (every 5 s) is printed while the bar is drawn
    tk::add_producer_settings(
        &config,
        "snapshot_chunk_rows = 2000\nmax_rows_per_second = 30000",
    );
    let producer = tk::bin("tunnel-producer");
    let mut unset = String::new();
    for (var, _) in tunnel_shared::config::ENV_OVERRIDES {
        unset.push_str(&format!("-u {var} "));
    }
    // the producer on a terminal of its own, stopped (SIGINT) once the snapshot is done
    let command = format!(
        "env {unset} RUST_LOG=info NO_COLOR=1 timeout -s INT 60 {} run --config {}",
        producer.display(),
        config.display()
    );
    // the terminal's output as it comes (-f), into a file of its own
    let typescript = config.with_file_name("terminal.txt");
    let mut script = std::process::Command::new("script")
        .args(["-qfec", &command])
        .arg(&typescript)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let file = typescript.clone();
    tk::wait_for("the snapshot to be done", Duration::from_secs(120), || {
        let file = file.clone();
        async move {
            std::fs::read_to_string(&file)
                .ok()
                .filter(|t| t.contains("snapshot done"))
                .map(|_| ())
        }
    })
    .await;
    // SIGINT to the producer (the script's child), then the script ends with it
    let _ = std::process::Command::new("pkill")
        .args(["-INT", "-f", &format!("run --config {}", config.display())])
        .status();
    let _ = script.wait();
    let text = strip_ansi(&std::fs::read_to_string(&typescript).unwrap());
    let segments: Vec<&str> = text.split(['\r', '\n']).collect();
    let bars = segments
        .iter()
        .filter(|s| s.contains("snapshot public.media [") && s.contains("rows/s"))
        .count();
    assert!(bars > 0, "no progress bar drawn:\n{text}");
    let logs: Vec<&&str> = segments
        .iter()
        .filter(|s| s.contains(" INFO ") || s.contains(" WARN "))
        .collect();
    assert!(
        logs.iter().any(|s| s.contains("snapshot progress")),
        "no progress log line during the snapshot:\n{text}"
    );
    for l in &logs {
        assert!(
            !l.contains("rows/s") && !l.contains("snapshot public.media ["),
            "a log line printed through the bar: {l}"
        );
    }
}
