//! A Kafka broker of a test's own (KRaft, one node, free ports, its own data directory), from
//! the jars the stack installed (`TUNNEL_KAFKA_LIBS`), so that a fault test can SIGKILL, restart
//! or pause it without disturbing the stack's broker and the tests that use it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use super::{env_or, free_port, unique};

/// A broker process; stopped and its data removed when dropped.
pub struct PrivateBroker {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
    libs: String,
}

fn java(libs: &str) -> Command {
    let mut c = Command::new("java");
    c.arg("-cp").arg(format!("{libs}/*"));
    c
}

impl PrivateBroker {
    /// Formats a fresh data directory and starts the broker; returns once it answers.
    pub fn start() -> PrivateBroker {
        let libs = env_or("TUNNEL_KAFKA_LIBS", "");
        assert!(
            !libs.is_empty(),
            "TUNNEL_KAFKA_LIBS is not set: run the tests through scripts/test.sh (or eval \"$(scripts/stack.sh env)\")"
        );
        let dir = std::env::temp_dir().join(unique("tunnel_broker"));
        std::fs::create_dir_all(dir.join("data"))
            .unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let (port, controller) = (free_port(), free_port());
        let props = format!(
            "process.roles=broker,controller\nnode.id=1\n\
             listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}\n\
             advertised.listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}\n\
             controller.listener.names=CONTROLLER\n\
             controller.quorum.bootstrap.servers=127.0.0.1:{controller}\n\
             inter.broker.listener.name=PLAINTEXT\n\
             listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT\n\
             log.dirs={data}\nauto.create.topics.enable=false\n\
             offsets.topic.replication.factor=1\noffsets.topic.num.partitions=3\n\
             transaction.state.log.replication.factor=1\ntransaction.state.log.min.isr=1\n\
             transaction.state.log.num.partitions=3\n\
             share.coordinator.state.topic.replication.factor=1\nshare.coordinator.state.topic.min.isr=1\n\
             group.initial.rebalance.delay.ms=0\n",
            data = dir.join("data").display()
        );
        let config = dir.join("server.properties");
        std::fs::write(&config, props)
            .unwrap_or_else(|e| panic!("write {}: {e}", config.display()));
        let id = java(&libs)
            .args(["kafka.tools.StorageTool", "random-uuid"])
            .output()
            .unwrap_or_else(|e| panic!("run java (kafka StorageTool): {e}"));
        let id = String::from_utf8_lossy(&id.stdout).trim().to_string();
        let format = java(&libs)
            .args([
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                "-t",
                &id,
            ])
            .arg("-c")
            .arg(&config)
            .output()
            .unwrap_or_else(|e| panic!("run java (kafka StorageTool): {e}"));
        assert!(
            format.status.success(),
            "kafka storage format failed: {}",
            String::from_utf8_lossy(&format.stderr)
        );
        let mut broker = PrivateBroker {
            dir,
            port,
            child: None,
            libs,
        };
        broker.restart();
        broker
    }

    /// `127.0.0.1:<port>`, for `kafka.brokers`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the broker (again, on the same ports and data) and waits until it answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the broker is running");
        let log = std::fs::File::create(self.dir.join("kafka.log"))
            .unwrap_or_else(|e| panic!("kafka log: {e}"));
        let err = log.try_clone().unwrap_or_else(|e| panic!("kafka log: {e}"));
        let child = Command::new("java")
            .args(["-Xms128m", "-Xmx512m", "-cp"])
            .arg(format!("{}/*", self.libs))
            .arg("kafka.Kafka")
            .arg(self.dir.join("server.properties"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start kafka: {e}"));
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(120));
    }

    fn wait_ready(&self, timeout: Duration) {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .set("log_level", "0")
            .create()
            .unwrap_or_else(|e| panic!("metadata client: {e}"));
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if consumer
                .fetch_metadata(None, Duration::from_secs(2))
                .is_ok_and(|m| !m.brokers().is_empty())
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "the private broker did not answer within {timeout:?}; see {}",
            self.dir.join("kafka.log").display()
        );
    }

    /// SIGKILL: no shutdown, no flush beyond what the OS already has.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`): a broker that stops answering without closing its
    /// connections, as behind a network partition.
    pub fn pause(&self, paused: bool) {
        if let Some(c) = &self.child {
            let sig = if paused { "-STOP" } else { "-CONT" };
            let _ = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status();
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.pause(false);
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
