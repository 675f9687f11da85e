//! Progress bars for long runs (the snapshot, `verify`, `dlq replay`): what, how far, the rate
//! and the time left, drawn by indicatif on a terminal below the log lines (see
//! [`crate::logging`]); nothing when stderr is not a terminal, where the log lines carry the
//! same figures.

use indicatif::{HumanCount, ProgressState, ProgressStyle};
use tracing::Span;
use tracing_indicatif::span_ext::IndicatifSpanExt;

/// A bar of `total` units (`unit`: "rows", "keys", "entries"), shown while it lives.
pub struct Bar {
    span: Span,
}

impl Bar {
    pub fn new(what: &str, total: u64, unit: &str) -> Bar {
        let span = tracing::info_span!("progress", indicatif.pb_show = true);
        let template = format!(
            "{{msg}} [{{wide_bar}}] {{human_pos}} / ~{{human_len}} {unit}, {{rate}} {unit}/s, eta {{eta}}"
        );
        if let Ok(style) = ProgressStyle::with_template(&template) {
            let style = style
                .with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{}", HumanCount(s.per_sec() as u64));
                })
                .progress_chars("=> ");
            span.pb_set_style(&style);
        }
        span.pb_set_message(what);
        span.pb_set_length(total);
        span.pb_start();
        Bar { span }
    }

    /// `n` more units done.
    pub fn inc(&self, n: u64) {
        self.span.pb_inc(n);
    }

    /// The total, when the estimate was short.
    pub fn set_length(&self, total: u64) {
        self.span.pb_set_length(total);
    }

    /// Where it stands (a resumed run starts past zero).
    pub fn set_position(&self, done: u64) {
        self.span.pb_set_position(done);
    }
}
