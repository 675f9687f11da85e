//! The workspace's binaries run as child processes by the integration tests.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{unique, wait_for};

/// A binary of the workspace, next to the test executable's `deps/` folder.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap_or_else(|| panic!("no target dir above {}", exe.display()));
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build it first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// A running `tunnel-producer` or `tunnel-consumer`, logging to a file beside its config (at
/// `info`, or the filter in `TUNNEL_TEST_LOG`). Killed when dropped.
pub struct Proc {
    child: Option<std::process::Child>,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `tunnel-<what> run --config <config>` without the environment overrides, so the
    /// config file alone decides where it connects.
    pub fn start(what: &str, config: &std::path::Path) -> Proc {
        Self::start_with(
            what,
            &["run", "--config", &config.display().to_string()],
            config,
        )
    }

    pub fn start_with(what: &str, args: &[&str], config: &std::path::Path) -> Proc {
        let dir = config.parent().unwrap_or_else(|| std::path::Path::new("."));
        let log = dir.join(format!("{what}-{}.log", unique("run")));
        let file =
            std::fs::File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let mut cmd = std::process::Command::new(bin(&format!("tunnel-{what}")));
        cmd.args(args)
            .env(
                "RUST_LOG",
                std::env::var("TUNNEL_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(file.try_clone().unwrap_or_else(|e| panic!("log file: {e}")))
            .stderr(file);
        for (var, _) in crate::config::ENV_OVERRIDES {
            cmd.env_remove(var);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start tunnel-{what}: {e}"));
        Proc {
            child: Some(child),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    fn signal(&self, sig: &str) {
        let _ = std::process::Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status();
    }

    /// SIGKILL: the process gets no chance to finish anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then the exit status (panics if it does not exit within `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        self.signal("-TERM");
        self.wait_exit(timeout)
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        let Some(child) = self.child.as_mut() else {
            panic!("process already gone");
        };
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "process did not exit within {timeout:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// What a failure message shows of the log: its first warnings and errors, then its last
    /// lines (a whole log is too long for a CI report, which cuts the middle out of it).
    pub fn log_summary(&self) -> String {
        const WARNINGS: usize = 30;
        const LAST: usize = 80;
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        let warnings: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("panicked"))
            .take(WARNINGS)
            .collect();
        let last = &lines[lines.len().saturating_sub(LAST)..];
        format!(
            "{} ({} lines)\nfirst warnings and errors:\n{}\nlast lines:\n{}",
            self.log.display(),
            lines.len(),
            warnings.join("\n"),
            last.join("\n")
        )
    }

    /// Waits until its log holds `text`, or panics after `timeout`.
    pub async fn wait_logged(&self, text: &str, timeout: Duration) {
        wait_for(&format!("'{text}' in the log"), timeout, || async {
            self.log_text().contains(text).then_some(())
        })
        .await
    }

    /// The process's state as the kernel tells it (`R` running, `S` sleeping, `T` stopped,
    /// `Z` exited and not reaped, ...), for a failure message.
    pub fn kernel_state(&self) -> String {
        let pid = self.pid();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // "pid (comm) state ...": the state follows the command's closing parenthesis
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or("gone");
        format!("pid {pid}: {state}")
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}
