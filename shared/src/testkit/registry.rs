//! A schema registry of a test's own (Apicurio, the stack's jar and Java, `TUNNEL_REGISTRY_JAR`
//! and `TUNNEL_REGISTRY_JAVA`), storing its schemas in a Kafka topic (kafkasql) of the broker it
//! is given, as the stack's registry does; a fault test can SIGKILL and restart it, and it
//! reads its schemas back from the topic.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{env_or, free_port, unique};

/// A registry process; killed and its directory removed when dropped.
pub struct PrivateRegistry {
    dir: PathBuf,
    port: u16,
    management_port: u16,
    brokers: String,
    child: Option<Child>,
    /// The one user of HTTP basic authentication, when it is on.
    basic: Option<(String, String)>,
    /// HTTPS only, with this certificate and key (PEM), when set.
    tls: Option<(PathBuf, PathBuf)>,
}

impl PrivateRegistry {
    /// Starts a registry on free ports keeping its schemas on `brokers`; returns once it
    /// answers. Blocking: call it from `spawn_blocking` in an async test.
    pub fn start(brokers: &str) -> PrivateRegistry {
        Self::start_with(brokers, None)
    }

    /// [`Self::start`], behind HTTP basic authentication with this one user (an admin).
    pub fn start_with_basic_auth(brokers: &str, user: &str, password: &str) -> PrivateRegistry {
        Self::start_with(brokers, Some((user.to_string(), password.to_string())))
    }

    /// [`Self::start_with_basic_auth`], over HTTPS only with the certificate `cert` and its key
    /// `key` (PEM; the certificate must name 127.0.0.1).
    pub fn start_secured(
        brokers: &str,
        user: &str,
        password: &str,
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> PrivateRegistry {
        let mut registry = Self::new(brokers, Some((user.to_string(), password.to_string())));
        registry.tls = Some((cert.to_path_buf(), key.to_path_buf()));
        registry.restart();
        registry
    }

    fn start_with(brokers: &str, basic: Option<(String, String)>) -> PrivateRegistry {
        let mut registry = Self::new(brokers, basic);
        registry.restart();
        registry
    }

    fn new(brokers: &str, basic: Option<(String, String)>) -> PrivateRegistry {
        let dir = std::env::temp_dir().join(unique("tunnel_registry"));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        PrivateRegistry {
            dir,
            port: free_port(),
            management_port: free_port(),
            brokers: brokers.to_string(),
            child: None,
            basic,
            tls: None,
        }
    }

    /// The Confluent-compatible API's URL, for `registry.url`.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}/apis/ccompat/v7", self.port)
    }

    /// Starts the registry (again, on the same ports and topic) and waits until it answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the registry is running");
        let (java, jar) = (
            env_or("TUNNEL_REGISTRY_JAVA", ""),
            env_or("TUNNEL_REGISTRY_JAR", ""),
        );
        assert!(
            !java.is_empty() && !jar.is_empty(),
            "TUNNEL_REGISTRY_JAVA / TUNNEL_REGISTRY_JAR are not set: run the tests through scripts/test.sh (or eval \"$(scripts/stack.sh env)\")"
        );
        let log = std::fs::File::create(self.dir.join("registry.log"))
            .unwrap_or_else(|e| panic!("registry log: {e}"));
        let err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("registry log: {e}"));
        let child = Command::new(java)
            .current_dir(&self.dir)
            .args(["-Xms64m", "-Xmx384m", "-Dquarkus.http.host=127.0.0.1"])
            .arg(format!("-Dquarkus.http.port={}", self.port))
            .arg("-Dquarkus.management.host=127.0.0.1")
            .arg(format!(
                "-Dquarkus.management.port={}",
                self.management_port
            ))
            .arg("-Dapicurio.storage.kind=kafkasql")
            .arg(format!(
                "-Dapicurio.kafkasql.bootstrap.servers={}",
                self.brokers
            ))
            .args(self.basic.iter().flat_map(|(user, password)| {
                [
                    "-Dquarkus.http.auth.basic=true".to_string(),
                    "-Dquarkus.security.users.embedded.plain-text=true".to_string(),
                    format!("-Dquarkus.security.users.embedded.users.{user}={password}"),
                    format!("-Dquarkus.security.users.embedded.roles.{user}=sr-admin"),
                ]
            }))
            .args(self.tls.iter().flat_map(|(cert, key)| {
                [
                    format!("-Dquarkus.http.ssl-port={}", self.port),
                    format!("-Dquarkus.http.port={}", free_port()),
                    format!("-Dquarkus.http.ssl.certificate.files={}", cert.display()),
                    format!("-Dquarkus.http.ssl.certificate.key-files={}", key.display()),
                    "-Dquarkus.http.insecure-requests=disabled".to_string(),
                ]
            }))
            .arg("-jar")
            .arg(jar)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start the registry: {e}"));
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(120));
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let url = format!("{}/subjects", self.url());
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let mut curl = Command::new("curl");
            if let Some((user, password)) = &self.basic {
                curl.args(["-u", &format!("{user}:{password}")]);
            }
            if self.tls.is_some() {
                // whether it answers, not whom it is: the tests check the certificate
                curl.arg("-k");
            }
            let ok = curl
                .args(["-fs", "-o", "/dev/null", "--max-time", "3", &url])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "the private registry exited ({status}); see {}",
                    self.dir.join("registry.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!(
            "the private registry did not answer within {timeout:?}; see {}",
            self.dir.join("registry.log").display()
        );
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRegistry {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
