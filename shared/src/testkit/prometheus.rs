//! A Prometheus of a test's own (`TUNNEL_PROMETHEUS_BIN`, Debian's package that the stack
//! installs): a free port, its own config, rules file and data directory under the temporary
//! directory, scraping the test's processes and evaluating its rules every second; and the two
//! calls of its HTTP API a test needs, `/api/v1/query` and `/api/v1/alerts`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{env_or, free_port, unique};

/// A Prometheus process; killed and its directory removed when dropped.
pub struct PrivatePrometheus {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
    http: reqwest::Client,
}

/// One element of an instant vector: its labels and value.
#[derive(Debug, Clone)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// An active alert (`pending` or `firing`; a resolved alert is no longer listed).
#[derive(Debug, Clone)]
pub struct Alert {
    pub name: String,
    pub state: String,
    pub labels: BTreeMap<String, String>,
}

impl PrivatePrometheus {
    /// Starts Prometheus on a free port, scraping each `(job, "host:port")` of `jobs` and
    /// evaluating `rules` (the text of one rules file), both every second; returns once it is
    /// ready. Blocking: call it from `spawn_blocking` in an async test.
    pub fn start(jobs: &[(&str, &str)], rules: &str) -> PrivatePrometheus {
        let bin = env_or("TUNNEL_PROMETHEUS_BIN", "");
        assert!(
            !bin.is_empty(),
            "TUNNEL_PROMETHEUS_BIN is not set: run the tests through scripts/test.sh (or eval \"$(scripts/stack.sh env)\"; scripts/stack.sh up installs Prometheus)"
        );
        let dir = std::env::temp_dir().join(unique("tunnel_prometheus"));
        std::fs::create_dir_all(dir.join("data"))
            .unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - rules.yml\nscrape_configs:\n",
        );
        for (job, addr) in jobs {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: [\"{addr}\"]\n"
            ));
        }
        for (name, text) in [("prometheus.yml", config.as_str()), ("rules.yml", rules)] {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        }
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log"))
            .unwrap_or_else(|e| panic!("prometheus log: {e}"));
        let err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("prometheus log: {e}"));
        let child = Command::new(&bin)
            .current_dir(&dir)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {bin}: {e}"));
        let mut prometheus = PrivatePrometheus {
            dir,
            port,
            child: Some(child),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_else(|e| panic!("http client: {e}")),
        };
        prometheus.wait_ready(Duration::from_secs(60));
        prometheus
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its log so far (for a failing test's message).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let url = format!("{}/-/ready", self.url());
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let ok = Command::new("curl")
                .args(["-fs", "-o", "/dev/null", "--max-time", "3", &url])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "the private Prometheus exited ({status}):\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "the private Prometheus was not ready within {timeout:?}:\n{}",
            self.log_text()
        );
    }

    /// GETs `path` of the API and returns its `data`, or `None` when the call failed.
    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Option<serde_json::Value> {
        let url = reqwest::Url::parse_with_params(&format!("{}{path}", self.url()), query).ok()?;
        let body: serde_json::Value = self.http.get(url).send().await.ok()?.json().await.ok()?;
        (body.get("status")?.as_str()? == "success").then(|| body["data"].clone())
    }

    /// The raw `data` of a GET of the API (e.g. `/api/v1/rules`), or `None` when it failed.
    pub async fn get(&self, path: &str) -> Option<serde_json::Value> {
        self.api(path, &[]).await
    }

    /// Evaluates `promql` now (`/api/v1/query`): its instant vector, or `None` when the query
    /// failed (or is not a vector).
    pub async fn query(&self, promql: &str) -> Option<Vec<Sample>> {
        let data = self.api("/api/v1/query", &[("query", promql)]).await?;
        if data.get("resultType")?.as_str()? != "vector" {
            return None;
        }
        let mut out = Vec::new();
        for r in data.get("result")?.as_array()? {
            let value = r.get("value")?.get(1)?.as_str()?.parse::<f64>().ok()?;
            out.push(Sample {
                labels: labels(r.get("metric")?),
                value,
            });
        }
        Some(out)
    }

    /// The active alerts (`/api/v1/alerts`), or `None` when the call failed.
    pub async fn alerts(&self) -> Option<Vec<Alert>> {
        let data = self.api("/api/v1/alerts", &[]).await?;
        let mut out = Vec::new();
        for a in data.get("alerts")?.as_array()? {
            let labels = labels(a.get("labels")?);
            out.push(Alert {
                name: labels.get("alertname").cloned().unwrap_or_default(),
                state: a.get("state")?.as_str()?.to_string(),
                labels,
            });
        }
        Some(out)
    }
}

fn labels(v: &serde_json::Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

impl Drop for PrivatePrometheus {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
