//! The built-in notifier (`[alerts] webhook_url`), for those without Prometheus: every
//! `check_interval_s` the process looks at its own metrics and health for the conditions of
//! `deploy/prometheus/alerts.yml` and posts what changed as Slack-compatible JSON
//! (`{"text": "..."}`), one line per condition:
//!
//! ```text
//! [FIRING] data-tunnel consumer: lag of public.media is 412 s (above 300 s)
//! [RESOLVED] data-tunnel consumer: lag of public.media is back under 300 s
//! ```
//!
//! The consumer looks at its lag per table, its readiness, its DLQs' growth and stopped
//! tables; the producer at its readiness, late reconciliation passes and stopped tables.
//! [`conditions`] finds what fires, [`notify`] decides what to post (rate limited: when a
//! condition starts, every `repeat_after_s` while it lasts, once resolved; at most one post
//! per check; a failed post is tried again at the next check). The URL may hold a token: it
//! is never logged.

pub mod conditions;
pub mod notify;

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, info, warn};

use crate::config::AlertsConfig;
use crate::metrics::Role;
use conditions::{Evaluator, Observed};
use notify::{Notices, Post, Status};

/// How long one post may take.
const POST_TIMEOUT: Duration = Duration::from_secs(10);

/// The notifier's settings, the check interval in any unit (the config's is in seconds).
#[derive(Clone, Debug)]
struct Settings {
    lag_above_s: u64,
    check_every: Duration,
    repeat_after: Duration,
}

/// Starts the notifier on a task of its own when `config` has a webhook URL; `None` otherwise
/// (or when no HTTP client could be made, which is logged). Call from within the runtime.
pub fn start(config: &AlertsConfig, role: Role) -> Option<JoinHandle<()>> {
    let url = config
        .webhook_url
        .clone()
        .filter(|u| !u.trim().is_empty())?;
    let settings = Settings {
        lag_above_s: config.lag_above_s,
        check_every: Duration::from_secs(config.check_interval_s.max(1)),
        repeat_after: Duration::from_secs(config.repeat_after_s),
    };
    let client = match http_client() {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "no alert notifications: the HTTP client could not be made");
            return None;
        }
    };
    info!(
        role = who(role),
        check_interval_s = config.check_interval_s,
        lag_above_s = config.lag_above_s,
        repeat_after_s = config.repeat_after_s,
        "posting alerts to the webhook of [alerts]"
    );
    Some(tokio::spawn(run(
        client,
        url,
        settings,
        role,
        conditions::observe,
    )))
}

fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(POST_TIMEOUT)
        .connect_timeout(POST_TIMEOUT)
        .build()
}

fn who(role: Role) -> &'static str {
    match role {
        Role::Producer => "data-tunnel producer",
        Role::Consumer => "data-tunnel consumer",
    }
}

/// Checks every `settings.check_every` (the first after one interval) until aborted.
async fn run<F>(
    client: reqwest::Client,
    url: String,
    settings: Settings,
    role: Role,
    mut observe: F,
) where
    F: FnMut() -> Observed + Send,
{
    let started = Instant::now();
    let mut evaluator = Evaluator::new(role, settings.lag_above_s);
    let mut notices = Notices::new(who(role), settings.repeat_after);
    let mut ticks = tokio::time::interval_at(started + settings.check_every, settings.check_every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let now = started.elapsed();
        let findings = evaluator.findings(&observe(), now);
        let Some(post) = notices.check(findings, now) else {
            continue;
        };
        match deliver(&client, &url, &post).await {
            Ok(()) => {
                notices.sent(&post, now);
                info!(
                    firing = post.count(Status::Firing),
                    resolved = post.count(Status::Resolved),
                    "alerts posted to the webhook"
                );
                debug!(text = %post.text(), "alerts posted");
            }
            Err(e) => warn!(
                error = %e,
                lines = post.lines.len(),
                "posting alerts to the webhook failed: trying again at the next check"
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum DeliverError {
    /// Without the URL (it may hold a token), with its causes.
    #[error("{}", chain(.0))]
    Send(reqwest::Error),
    #[error("the webhook answered {0}")]
    Status(reqwest::StatusCode),
}

/// An error and its causes, `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

async fn deliver(client: &reqwest::Client, url: &str, post: &Post) -> Result<(), DeliverError> {
    let response = client
        .post(url)
        .json(&post.json())
        .send()
        .await
        .map_err(|e| DeliverError::Send(e.without_url()))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(DeliverError::Status(status))
    }
}

#[cfg(all(test, feature = "testkit"))]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::testkit::Webhook;

    const WAIT: Duration = Duration::from_secs(10);

    /// The notifier of a consumer checking every 100 ms what the test sets, counting its checks.
    struct Harness {
        observed: Arc<Mutex<Observed>>,
        checks: Arc<AtomicUsize>,
        task: JoinHandle<()>,
    }

    impl Harness {
        fn start(url: String, repeat_after: Duration) -> Harness {
            let observed = Arc::new(Mutex::new(Observed::default()));
            let checks = Arc::new(AtomicUsize::new(0));
            let (o, c) = (observed.clone(), checks.clone());
            let settings = Settings {
                lag_above_s: 5,
                check_every: Duration::from_millis(100),
                repeat_after,
            };
            let task = tokio::spawn(run(
                http_client().unwrap(),
                url,
                settings,
                Role::Consumer,
                move || {
                    c.fetch_add(1, Ordering::SeqCst);
                    o.lock().unwrap().clone()
                },
            ));
            Harness {
                observed,
                checks,
                task,
            }
        }

        fn set(&self, f: impl FnOnce(&mut Observed)) {
            f(&mut self.observed.lock().unwrap());
        }

        /// Waits until the notifier made `n` more checks than now.
        async fn checks_pass(&self, n: usize) {
            let target = self.checks.load(Ordering::SeqCst) + n;
            crate::testkit::wait_for(&format!("{n} checks"), WAIT, || async {
                (self.checks.load(Ordering::SeqCst) >= target).then_some(())
            })
            .await;
        }
    }

    impl Drop for Harness {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    #[tokio::test]
    async fn a_lag_is_posted_firing_then_resolved_and_nothing_more_within_the_repeat() {
        let hook = Webhook::start().await;
        let h = Harness::start(hook.url(), Duration::from_secs(3600));
        h.checks_pass(3).await;
        assert!(hook.received().is_empty(), "nothing fires yet");
        h.set(|o| o.lags = vec![("public.media".into(), 2.0), ("public.media".into(), 412.4)]);
        let (i, firing) = hook
            .wait_post("the firing lag", 0, WAIT, |t| t.contains("[FIRING]"))
            .await;
        assert_eq!(i, 0);
        assert_eq!(firing.method, "POST");
        assert_eq!(firing.path, "/hook");
        assert!(
            firing.content_type.starts_with("application/json"),
            "{firing:?}"
        );
        assert_eq!(
            firing.json,
            serde_json::json!({
                "text": "[FIRING] data-tunnel consumer: lag of public.media is 412 s (above 5 s)"
            })
        );
        // still firing: not again within repeat_after
        h.checks_pass(5).await;
        assert_eq!(hook.received().len(), 1, "{:?}", hook.received());
        h.set(|o| o.lags = vec![("public.media".into(), 1.0)]);
        let (i, resolved) = hook
            .wait_post("the resolved lag", 1, WAIT, |t| t.contains("[RESOLVED]"))
            .await;
        assert_eq!(i, 1);
        assert_eq!(
            resolved.text,
            "[RESOLVED] data-tunnel consumer: lag of public.media is back under 5 s"
        );
        h.checks_pass(5).await;
        assert_eq!(hook.received().len(), 2, "{:?}", hook.received());
    }

    #[tokio::test]
    async fn a_post_the_receiver_refused_is_posted_again_at_the_next_check() {
        let hook = Webhook::start().await;
        hook.answer_next(500);
        let h = Harness::start(hook.url(), Duration::from_secs(3600));
        h.set(|o| {
            o.problems = vec!["apply: no progress for 75 s (bound 60 s)".into()];
            o.lags = vec![("public.refused".into(), 6.0)];
        });
        let (_, refused) = hook
            .wait_post("the first post", 0, WAIT, |t| !t.is_empty())
            .await;
        assert_eq!(refused.status, 500);
        let (i, again) = hook
            .wait_post("the post again", 1, WAIT, |t| !t.is_empty())
            .await;
        assert_eq!(i, 1, "at the next check");
        assert_eq!(again.status, 200);
        assert_eq!(
            again.text,
            "[FIRING] data-tunnel consumer: lag of public.refused is 6 s (above 5 s)\n\
             [FIRING] data-tunnel consumer: not ready: apply: no progress for 75 s (bound 60 s)"
        );
        assert_eq!(again.text, refused.text);
        // delivered: nothing more while it lasts
        h.checks_pass(5).await;
        assert_eq!(hook.received().len(), 2, "{:?}", hook.received());
    }

    #[tokio::test]
    async fn a_receiver_that_was_down_gets_the_post_once_it_is_up() {
        // a port nobody listens on: bound, then let go
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = free.local_addr().unwrap();
        drop(free);
        let h = Harness::start(format!("http://{addr}/hook"), Duration::from_secs(3600));
        h.set(|o| o.lags = vec![("public.down".into(), 60.0)]);
        h.checks_pass(3).await;
        let hook = Webhook::start_on(addr).await;
        let (_, post) = hook
            .wait_post("the post once up", 0, WAIT, |t| !t.is_empty())
            .await;
        assert_eq!(
            post.text,
            "[FIRING] data-tunnel consumer: lag of public.down is 60 s (above 5 s)"
        );
    }

    #[tokio::test]
    async fn a_failed_post_is_told_without_the_url() {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = free.local_addr().unwrap();
        drop(free);
        let post = Post { lines: vec![] };
        let e = deliver(
            &http_client().unwrap(),
            &format!("http://{addr}/services/secret-token"),
            &post,
        )
        .await
        .unwrap_err();
        // as logged: what failed, not where
        let text = e.to_string();
        assert!(text.contains("Connection refused"), "{text}");
        assert!(!text.contains("secret-token"), "{text}");
        assert!(!text.contains(&addr.port().to_string()), "{text}");
        assert!(!format!("{e:?}").contains("secret-token"), "{e:?}");

        let hook = Webhook::start().await;
        hook.answer_next(503);
        let e = deliver(&http_client().unwrap(), &hook.url(), &post)
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "the webhook answered 503 Service Unavailable"
        );
    }
}
