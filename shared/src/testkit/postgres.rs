//! A PostgreSQL server of a test's own (initdb into a temporary directory, a free port), from
//! the binaries the stack uses (`TUNNEL_PG_BINDIR`), so that a fault test can stop it the hard
//! way (`pg_ctl stop -m immediate`: no checkpoint, crash recovery at the next start) without
//! disturbing the stack's servers and the tests that use them. It has the stack's roles
//! (`app`, the SELECT-only `tunnel_reader`, `tunnel_writer`) with the stack's passwords.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{env_or, free_port, unique};

/// A server process; stopped and its data removed when dropped.
pub struct PrivatePostgres {
    dir: PathBuf,
    port: u16,
    bindir: String,
    running: bool,
}

/// Runs a PostgreSQL binary as the user the server runs as: ourselves, or `postgres` when we
/// are root (the server refuses to run as root).
fn as_pg(bindir: &str, program: &str) -> Command {
    let path = Path::new(bindir).join(program);
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn run(mut c: Command, what: &str) {
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PrivatePostgres {
    /// Initialises a fresh cluster, starts it and creates the stack's roles; returns once it
    /// answers. Blocking: call it from `spawn_blocking` in an async test.
    pub fn start() -> PrivatePostgres {
        let bindir = env_or("TUNNEL_PG_BINDIR", "");
        assert!(
            !bindir.is_empty(),
            "TUNNEL_PG_BINDIR is not set: run the tests through scripts/test.sh (or eval \"$(scripts/stack.sh env)\")"
        );
        let dir = std::env::temp_dir().join(unique("tunnel_pg"));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        if is_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.arg("postgres").arg(&dir);
                    c
                },
                "chown the private server's directory",
            );
        }
        let data = dir.join("data");
        let mut initdb = as_pg(&bindir, "initdb");
        initdb.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        ]);
        run(initdb, "initdb of a private server");
        let port = free_port();
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{dir}'\n\
             max_connections = 100\nshared_buffers = 64MB\nfsync = on\n\
             shared_preload_libraries = 'pg_stat_statements'\n",
            dir = dir.display()
        );
        let conf_path = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path)
            .unwrap_or_else(|e| panic!("read {}: {e}", conf_path.display()));
        text.push_str(&conf);
        std::fs::write(&conf_path, text)
            .unwrap_or_else(|e| panic!("write {}: {e}", conf_path.display()));
        let mut pg = PrivatePostgres {
            dir,
            port,
            bindir,
            running: false,
        };
        pg.restart();
        let roles = format!(
            "CREATE ROLE app LOGIN CREATEDB PASSWORD '{app}';\
             CREATE ROLE tunnel_reader LOGIN PASSWORD '{reader}';\
             ALTER ROLE tunnel_reader SET default_transaction_read_only = on;\
             GRANT pg_read_all_stats TO tunnel_reader;\
             CREATE ROLE tunnel_writer LOGIN CREATEDB PASSWORD '{writer}';",
            app = env_or("TUNNEL_APP_PASSWORD", "app"),
            reader = env_or("TUNNEL_READER_PASSWORD", "reader"),
            writer = env_or("TUNNEL_WRITER_PASSWORD", "writer"),
        );
        pg.psql("postgres", &roles);
        // every database created from now on lets the reader SELECT the application's tables
        pg.psql(
            "template1",
            "CREATE EXTENSION IF NOT EXISTS pg_stat_statements;\
             ALTER DEFAULT PRIVILEGES FOR ROLE app IN SCHEMA public GRANT SELECT ON TABLES TO tunnel_reader;",
        );
        pg
    }

    /// Runs SQL as the superuser in database `db`.
    pub fn psql(&self, db: &str, sql: &str) {
        let mut c = as_pg(&self.bindir, "psql");
        c.args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
        ])
        .args(["-p", &self.port.to_string(), "-d", db, "-c", sql]);
        run(c, "psql on a private server");
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://user:password@127.0.0.1:<port>/db`.
    pub fn url(&self, user: &str, password: &str, db: &str) -> String {
        format!("postgres://{user}:{password}@127.0.0.1:{}/{db}", self.port)
    }

    /// As a source server: the application's and the reader's URLs (database `postgres`).
    pub(super) fn source_urls(&self) -> (String, String) {
        (
            self.url("app", &env_or("TUNNEL_APP_PASSWORD", "app"), "postgres"),
            self.url(
                "tunnel_reader",
                &env_or("TUNNEL_READER_PASSWORD", "reader"),
                "postgres",
            ),
        )
    }

    /// As a target server: the writer's URL (database `postgres`).
    pub(super) fn target_url(&self) -> String {
        self.url(
            "tunnel_writer",
            &env_or("TUNNEL_WRITER_PASSWORD", "writer"),
            "postgres",
        )
    }

    /// Starts the server (again, on the same port and data) and waits until it answers.
    pub fn restart(&mut self) {
        assert!(!self.running, "the server is running");
        let mut c = as_pg(&self.bindir, "pg_ctl");
        c.arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-w", "-t", "120", "start"]);
        run(c, "pg_ctl start of a private server");
        self.running = true;
    }

    /// Turns TLS on (`ssl = on` with this certificate and key, and `ca` to check client
    /// certificates against), puts `hba` first in `pg_hba.conf`, and restarts the server.
    pub fn enable_tls(&mut self, cert: &Path, key: &Path, ca: &Path, hba: &str) {
        let data = self.dir.join("data");
        for (from, to) in [(cert, "server.crt"), (key, "server.key"), (ca, "root.crt")] {
            std::fs::copy(from, data.join(to))
                .unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
        }
        let mut chmod = Command::new("chmod");
        chmod.arg("600").arg(data.join("server.key"));
        run(chmod, "chmod the server key");
        if is_root() {
            let mut c = Command::new("chown");
            c.arg("postgres")
                .arg(data.join("server.crt"))
                .arg(data.join("server.key"))
                .arg(data.join("root.crt"));
            run(c, "chown the server's certificates");
        }
        let conf_path = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path)
            .unwrap_or_else(|e| panic!("read {}: {e}", conf_path.display()));
        text.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nssl_ca_file = 'root.crt'\n");
        std::fs::write(&conf_path, text)
            .unwrap_or_else(|e| panic!("write {}: {e}", conf_path.display()));
        let hba_path = data.join("pg_hba.conf");
        let old = std::fs::read_to_string(&hba_path)
            .unwrap_or_else(|e| panic!("read {}: {e}", hba_path.display()));
        std::fs::write(&hba_path, format!("{hba}\n{old}"))
            .unwrap_or_else(|e| panic!("write {}: {e}", hba_path.display()));
        self.stop_immediate();
        self.restart();
    }

    /// `pg_ctl stop -m immediate`: every backend ends at once, nothing is flushed beyond the
    /// WAL already written; the next start runs crash recovery.
    pub fn stop_immediate(&mut self) {
        if self.running {
            run(self.pg_ctl_stop(), "pg_ctl stop of a private server");
            self.running = false;
        }
    }

    fn pg_ctl_stop(&self) -> Command {
        let mut c = as_pg(&self.bindir, "pg_ctl");
        c.arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "-t", "60", "stop"]);
        c
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if self.running {
            let mut c = as_pg(&self.bindir, "pg_ctl");
            c.arg("-D").arg(self.dir.join("data")).args([
                "-m",
                "immediate",
                "-w",
                "-t",
                "60",
                "stop",
            ]);
            let _ = c.output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
