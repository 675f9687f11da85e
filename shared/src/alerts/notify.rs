//! What to post, given the conditions firing now and what was posted before: no I/O and no
//! clock (times are given), so every rule of the rate limit is tested with synthetic inputs.
//!
//! A condition (its kind and subject, e.g. the lag of one table) is posted when it starts
//! firing, again every `repeat_after` while it keeps firing, and once when it is resolved. A
//! check posts everything due in one message. A post counts only once delivered
//! ([`Notices::sent`]): a failed one is due again at the next check.

use std::collections::BTreeMap;
use std::time::Duration;

/// What a condition is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// The consumer's lag of a table is above the bound.
    Lag,
    /// A stage of the process made no progress within its bound, or stopped.
    NotReady,
    /// A table's DLQ grew since the previous check.
    DlqGrowing,
    /// A table's reconciliation completed no pass within three of its intervals.
    ReconcileLate,
    /// A table (or a stage of it) was stopped by a change it cannot follow.
    TableStopped,
}

/// One condition: its kind and what it is about (a table; empty for the whole process).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub kind: Kind,
    pub subject: String,
}

/// A condition firing now, with the words for it now and for when it is over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub key: Key,
    /// E.g. `lag of public.media is 412 s (above 300 s)`.
    pub firing: String,
    /// E.g. `lag of public.media is back under 300 s`.
    pub resolved: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Firing,
    Resolved,
}

/// One line of a post.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub key: Key,
    pub status: Status,
    /// The whole line: `[FIRING] data-tunnel consumer: lag of ...`.
    pub text: String,
}

/// What one check posts: one line per condition due.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Post {
    pub lines: Vec<Line>,
}

impl Post {
    /// The message's text: its lines, one per line.
    pub fn text(&self) -> String {
        self.lines
            .iter()
            .map(|l| l.text.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Slack-compatible JSON: `{"text": "..."}`.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({ "text": self.text() })
    }

    pub fn count(&self, status: Status) -> usize {
        self.lines.iter().filter(|l| l.status == status).count()
    }
}

struct Entry {
    /// Firing at the last check.
    firing: bool,
    /// When its firing was last delivered; `None`: never.
    posted_at: Option<Duration>,
    resolved: String,
}

/// The conditions known to the notifier and what was delivered of them.
pub struct Notices {
    /// Who posts, e.g. `data-tunnel consumer`.
    who: String,
    repeat_after: Duration,
    entries: BTreeMap<Key, Entry>,
}

impl Notices {
    pub fn new(who: &str, repeat_after: Duration) -> Self {
        Self {
            who: who.to_string(),
            repeat_after,
            entries: BTreeMap::new(),
        }
    }

    /// The conditions firing at `now` (time since any fixed start): what is due, if anything.
    /// Nothing is marked delivered here: call [`Notices::sent`] once the post got through.
    pub fn check(&mut self, findings: Vec<Finding>, now: Duration) -> Option<Post> {
        let mut firing_now: BTreeMap<Key, Finding> =
            findings.into_iter().map(|f| (f.key.clone(), f)).collect();
        // over before it was ever delivered: nothing to tell
        self.entries
            .retain(|key, e| firing_now.contains_key(key) || e.posted_at.is_some());
        let mut lines = Vec::new();
        for (key, e) in self.entries.iter_mut() {
            if !firing_now.contains_key(key) {
                e.firing = false;
                lines.push(Line {
                    key: key.clone(),
                    status: Status::Resolved,
                    text: format!("[RESOLVED] {}: {}", self.who, e.resolved),
                });
            }
        }
        for (key, f) in std::mem::take(&mut firing_now) {
            let e = self.entries.entry(key.clone()).or_insert(Entry {
                firing: true,
                posted_at: None,
                resolved: String::new(),
            });
            e.firing = true;
            e.resolved = f.resolved;
            let due = e
                .posted_at
                .is_none_or(|at| now.saturating_sub(at) >= self.repeat_after);
            if due {
                lines.push(Line {
                    key,
                    status: Status::Firing,
                    text: format!("[FIRING] {}: {}", self.who, f.firing),
                });
            }
        }
        (!lines.is_empty()).then_some(Post { lines })
    }

    /// `post` (from the last [`Notices::check`]) was delivered at `now`.
    pub fn sent(&mut self, post: &Post, now: Duration) {
        for line in &post.lines {
            match line.status {
                Status::Firing => {
                    if let Some(e) = self.entries.get_mut(&line.key) {
                        e.posted_at = Some(now);
                    }
                }
                Status::Resolved => {
                    if self.entries.get(&line.key).is_some_and(|e| !e.firing) {
                        self.entries.remove(&line.key);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lag(table: &str, s: u64) -> Finding {
        Finding {
            key: Key {
                kind: Kind::Lag,
                subject: table.into(),
            },
            firing: format!("lag of {table} is {s} s (above 300 s)"),
            resolved: format!("lag of {table} is back under 300 s"),
        }
    }

    fn not_ready() -> Finding {
        Finding {
            key: Key {
                kind: Kind::NotReady,
                subject: String::new(),
            },
            firing: "not ready: apply: no progress for 75 s (bound 60 s)".into(),
            resolved: "ready again".into(),
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn texts(post: &Option<Post>) -> Vec<String> {
        post.as_ref()
            .map(|p| p.lines.iter().map(|l| l.text.clone()).collect())
            .unwrap_or_default()
    }

    /// A check whose post is delivered.
    fn delivered(n: &mut Notices, findings: Vec<Finding>, now: Duration) -> Vec<String> {
        let post = n.check(findings, now);
        if let Some(p) = &post {
            n.sent(p, now);
        }
        texts(&post)
    }

    #[test]
    fn a_condition_is_posted_when_it_starts_while_it_lasts_only_after_the_repeat_and_once_resolved()
    {
        let mut n = Notices::new("data-tunnel consumer", secs(3600));
        assert!(n.check(vec![], secs(0)).is_none());
        assert_eq!(
            delivered(&mut n, vec![lag("public.media", 412)], secs(15)),
            vec!["[FIRING] data-tunnel consumer: lag of public.media is 412 s (above 300 s)"]
        );
        // still firing, within the repeat interval: nothing
        for t in [30, 45, 600, 3614] {
            assert!(delivered(&mut n, vec![lag("public.media", 500)], secs(t)).is_empty());
        }
        // the repeat
        assert_eq!(
            delivered(&mut n, vec![lag("public.media", 900)], secs(3615)),
            vec!["[FIRING] data-tunnel consumer: lag of public.media is 900 s (above 300 s)"]
        );
        assert_eq!(
            delivered(&mut n, vec![], secs(3630)),
            vec!["[RESOLVED] data-tunnel consumer: lag of public.media is back under 300 s"]
        );
        // resolved once only
        assert!(delivered(&mut n, vec![], secs(3645)).is_empty());
        // firing again: posted at once, whatever the repeat interval
        assert_eq!(
            delivered(&mut n, vec![lag("public.media", 301)], secs(3660)).len(),
            1
        );
    }

    #[test]
    fn conditions_of_one_check_go_in_one_post_each_table_on_its_own() {
        let mut n = Notices::new("data-tunnel consumer", secs(3600));
        let post = n
            .check(
                vec![lag("public.a", 400), lag("public.b", 500), not_ready()],
                secs(1),
            )
            .unwrap();
        assert_eq!(post.lines.len(), 3);
        assert_eq!(post.count(Status::Firing), 3);
        n.sent(&post, secs(1));
        let text = post.json()["text"].as_str().unwrap().to_string();
        assert_eq!(text.lines().count(), 3);
        assert!(text.contains("lag of public.a is 400 s"), "{text}");
        assert!(text.contains("lag of public.b is 500 s"), "{text}");
        // b resolves, a keeps firing (its repeat is not due): only b's resolution
        assert_eq!(
            delivered(&mut n, vec![lag("public.a", 410), not_ready()], secs(2)),
            vec!["[RESOLVED] data-tunnel consumer: lag of public.b is back under 300 s"]
        );
        // a resolves and c starts in the same check: one post with both
        let post = n.check(vec![lag("public.c", 350), not_ready()], secs(3));
        assert_eq!(
            texts(&post),
            vec![
                "[RESOLVED] data-tunnel consumer: lag of public.a is back under 300 s",
                "[FIRING] data-tunnel consumer: lag of public.c is 350 s (above 300 s)",
            ]
        );
    }

    #[test]
    fn a_post_that_failed_is_due_again_at_the_next_check() {
        let mut n = Notices::new("data-tunnel producer", secs(3600));
        // the receiver is down: not marked sent
        let first = n.check(vec![not_ready()], secs(10));
        assert_eq!(first.as_ref().map(|p| p.lines.len()), Some(1));
        let again = delivered(&mut n, vec![not_ready()], secs(25));
        assert_eq!(
            again,
            vec!["[FIRING] data-tunnel producer: not ready: apply: no progress for 75 s (bound 60 s)"]
        );
        assert!(delivered(&mut n, vec![not_ready()], secs(40)).is_empty());
        // the resolution fails to get through: due again, once
        let failed = n.check(vec![], secs(55));
        assert_eq!(
            texts(&failed),
            vec!["[RESOLVED] data-tunnel producer: ready again"]
        );
        assert_eq!(
            delivered(&mut n, vec![], secs(70)),
            vec!["[RESOLVED] data-tunnel producer: ready again"]
        );
        assert!(delivered(&mut n, vec![], secs(85)).is_empty());
    }

    #[test]
    fn a_repeat_that_failed_is_due_at_the_next_check() {
        let mut n = Notices::new("data-tunnel consumer", secs(60));
        assert_eq!(delivered(&mut n, vec![lag("t", 400)], secs(0)).len(), 1);
        assert!(n.check(vec![lag("t", 400)], secs(60)).is_some()); // not delivered
        assert_eq!(delivered(&mut n, vec![lag("t", 400)], secs(75)).len(), 1);
        // the next repeat counts from the delivery
        assert!(delivered(&mut n, vec![lag("t", 400)], secs(130)).is_empty());
        assert_eq!(delivered(&mut n, vec![lag("t", 400)], secs(135)).len(), 1);
    }

    #[test]
    fn a_condition_over_before_its_post_got_through_is_not_told_at_all() {
        let mut n = Notices::new("data-tunnel consumer", secs(3600));
        assert!(n.check(vec![lag("t", 400)], secs(0)).is_some()); // failed
        assert!(delivered(&mut n, vec![], secs(15)).is_empty());
        assert!(delivered(&mut n, vec![], secs(30)).is_empty());
    }

    #[test]
    fn a_condition_back_before_its_resolution_got_through_is_not_posted_again() {
        let mut n = Notices::new("data-tunnel consumer", secs(3600));
        assert_eq!(delivered(&mut n, vec![lag("t", 400)], secs(0)).len(), 1);
        assert!(n.check(vec![], secs(15)).is_some()); // the resolution failed
                                                      // firing again: for the receiver it never stopped
        assert!(delivered(&mut n, vec![lag("t", 420)], secs(30)).is_empty());
        assert_eq!(
            delivered(&mut n, vec![], secs(45)),
            vec!["[RESOLVED] data-tunnel consumer: lag of t is back under 300 s"]
        );
    }
}
