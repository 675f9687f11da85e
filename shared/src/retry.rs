//! Retrying transient failures with exponential back-off.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::fault::Classify;

/// Exponential back-off from `initial` up to `max`, doubled after every failure.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    initial: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            next: initial,
            initial,
            max,
        }
    }

    /// The delay to wait now; the following one is twice as long (up to `max`).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = self.initial;
    }

    /// After a transient failure of `what`: logs it with the delay, and returns the wait
    /// (await it). For loops that must do more than call one operation again (reconnect, keep
    /// state). The error is only borrowed while it is logged, so the wait is `Send`.
    pub fn wait_after(&mut self, what: &str, error: &dyn std::fmt::Display) -> tokio::time::Sleep {
        let delay = self.next_delay();
        tracing::warn!(what, error = %error, delay_ms = delay.as_millis() as u64, "transient failure, retrying");
        crate::metrics::metrics().error(crate::fault::ErrorClass::Transient);
        tokio::time::sleep(delay)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(200), Duration::from_secs(10))
    }
}

/// Until the process has started ([`started`]), retries give up at this time: a connection that
/// has never succeeded (a mistyped port on a first run) ends the process with its error instead
/// of being retried for minutes. Once started, a lost connection is retried as always.
static START_UP_DEADLINE: OnceLock<Instant> = OnceLock::new();
static STARTED: AtomicBool = AtomicBool::new(false);

/// Gives the process `timeout` to start (`startup_timeout_s`; zero: no limit).
pub fn start_up_within(timeout: Duration) {
    if !timeout.is_zero() {
        let _ = START_UP_DEADLINE.set(Instant::now() + timeout);
    }
}

/// The process has started: its endpoints answered once; retries no longer give up early.
pub fn started() {
    STARTED.store(true, Ordering::Relaxed);
}

/// Whether start-up has run out of time.
fn start_up_over() -> bool {
    !STARTED.load(Ordering::Relaxed)
        && START_UP_DEADLINE
            .get()
            .is_some_and(|d| Instant::now() >= *d)
}

/// Runs `op` until it succeeds or fails with an error that is not transient, or until
/// `attempts` tries have failed (or, during start-up, its time is over). Every retry is logged
/// with `what`.
pub async fn retry<T, E, F, Fut>(what: &str, attempts: u32, mut op: F) -> Result<T, E>
where
    E: Classify + std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = Backoff::default();
    let mut tried = 0;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if start_up_over() => {
                tracing::error!(what, error = %e, "start-up: gave up after startup_timeout_s without an answer");
                return Err(e);
            }
            Err(e) if e.is_transient() && tried + 1 < attempts => {
                tried += 1;
                backoff.wait_after(what, &e).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_max() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        assert_eq!(b.next_delay(), Duration::from_millis(100));
        assert_eq!(b.next_delay(), Duration::from_millis(200));
        assert_eq!(b.next_delay(), Duration::from_millis(350));
        assert_eq!(b.next_delay(), Duration::from_millis(350));
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }

    #[derive(Debug)]
    struct E(bool);
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "e{}", self.0)
        }
    }
    impl Classify for E {
        fn class(&self) -> crate::fault::ErrorClass {
            if self.0 {
                crate::fault::ErrorClass::Transient
            } else {
                crate::fault::ErrorClass::Definite
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_only_retryable_errors() {
        let mut calls = 0;
        let r: Result<(), E> = retry("x", 5, || {
            calls += 1;
            async { Err(E(false)) }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls, 1);

        let mut calls = 0;
        let r: Result<u8, E> = retry("x", 5, || {
            calls += 1;
            let n = calls;
            async move {
                if n < 3 {
                    Err(E(true))
                } else {
                    Ok(7)
                }
            }
        })
        .await;
        assert_eq!(r.unwrap(), 7);
        assert_eq!(calls, 3);
    }
}
