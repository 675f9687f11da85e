//! What every fault case shares: a `media` table under a steady load, replicated through the
//! servers the case may break (private ones, so that breaking them disturbs no other test), and
//! the checks that end each case.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use tunnel_shared::testkit::{
    self as tk, Databases, PrivateBroker, PrivatePostgres, PrivateRegistry, Proc,
};

pub const MEDIA: &str = "CREATE TABLE media (
    id serial PRIMARY KEY,
    s3_path varchar(1024),
    format varchar(5),
    type smallint,
    updated_at timestamp DEFAULT now())";

/// How long the pipeline may take to be identical again once the fault is over.
pub const RECOVERY: Duration = Duration::from_secs(90);

/// Inserts (a tenth of them of `type` 3), updates and deletes at about 20 a second until
/// `stop`; returns how many it made. A statement that fails (the source is down) is not
/// counted, and the load connects again.
/// `gate` is held around each statement: [`Load::caught_up`] takes it to pause the load.
async fn steady_load(
    url: String,
    stop: Arc<AtomicBool>,
    gate: Arc<tokio::sync::Mutex<()>>,
    seed: u64,
) -> usize {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut client: Option<tokio_postgres::Client> = None;
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        // the load's own pace, not a wait for a condition
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _turn = gate.lock().await;
        if client
            .as_ref()
            .is_none_or(tokio_postgres::Client::is_closed)
        {
            client = match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                Ok((c, conn)) => {
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    Some(c)
                }
                Err(_) => None,
            };
        }
        let Some(c) = client.as_ref() else { continue };
        let id: i32 = rng.gen_range(1..=500);
        let kind: i16 = if rng.gen_range(0..10) == 0 { 3 } else { 1 };
        let (sql, value): (&str, &(dyn tokio_postgres::types::ToSql + Sync)) =
            match rng.gen_range(0..10) {
                0..=4 => (
                    "INSERT INTO media (s3_path, format, type) VALUES ('/load', 'jpg', $1)",
                    &kind,
                ),
                5..=8 => (
                    "UPDATE media SET s3_path = '/u' || id, updated_at = now() WHERE id = (SELECT id FROM media ORDER BY abs(id - $1) LIMIT 1)",
                    &id,
                ),
                _ => (
                    "DELETE FROM media WHERE id = (SELECT id FROM media ORDER BY abs(id - $1) LIMIT 1)",
                    &id,
                ),
            };
        let result = c.execute(sql, &[value]).await;
        if result.is_ok() {
            n += 1;
        }
    }
    n
}

/// A steady load running until [`Load::end`].
pub struct Load {
    stop: Arc<AtomicBool>,
    gate: Arc<tokio::sync::Mutex<()>>,
    task: tokio::task::JoinHandle<usize>,
}

impl Load {
    pub fn start(dbs: &Databases, seed: u64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let gate = Arc::new(tokio::sync::Mutex::new(()));
        let task = tokio::spawn(steady_load(
            dbs.source_admin_url.clone(),
            stop.clone(),
            gate.clone(),
            seed,
        ));
        Load { stop, gate, task }
    }

    /// Pauses the load until `table` is identical in the target (the pipeline runs and has
    /// caught up), then lets it go on. (Under a change every 50 ms, a pipeline with a
    /// latency above that on a loaded machine is seldom seen identical at all.)
    pub async fn caught_up(&self, dbs: &Databases, procs: &[&Proc]) {
        let _paused = self.gate.lock().await;
        tk::wait_identical(dbs, "media", RECOVERY, procs).await;
    }

    /// Stops the load; how many changes it made.
    pub async fn end(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// Which servers a case has of its own.
#[derive(Default, Clone, Copy)]
pub struct Private {
    pub broker: bool,
    /// A registry keeping its schemas on the case's broker (private too).
    pub registry: bool,
    pub source: bool,
    pub target: bool,
}

/// A table under load, replicated through the case's servers.
pub struct Case {
    pub dbs: Databases,
    broker: Option<PrivateBroker>,
    registry: Option<PrivateRegistry>,
    source: Option<PrivatePostgres>,
    target: Option<PrivatePostgres>,
    pub config: std::path::PathBuf,
    pub prefix: String,
    group: String,
}

/// Runs a blocking start or restart of a private server off the runtime's threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

impl Case {
    /// `media` with 500 rows, replicated through a private broker.
    pub async fn new() -> Case {
        Self::build(
            Private {
                broker: true,
                ..Private::default()
            },
            500,
            "",
        )
        .await
    }

    /// `media` with `rows` rows before the pipeline starts, the servers `private` names of the
    /// case's own, `extra` appended to the config.
    pub async fn build(private: Private, rows: i64, extra: &str) -> Case {
        let broker = if private.broker || private.registry {
            Some(blocking(PrivateBroker::start).await)
        } else {
            None
        };
        let registry = match (&broker, private.registry) {
            (Some(b), true) => {
                let brokers = b.brokers();
                Some(blocking(move || PrivateRegistry::start(&brokers)).await)
            }
            _ => None,
        };
        let source = if private.source {
            Some(blocking(PrivatePostgres::start).await)
        } else {
            None
        };
        let target = if private.target {
            Some(blocking(PrivatePostgres::start).await)
        } else {
            None
        };
        let dbs = Databases::create_on(source.as_ref(), target.as_ref()).await;
        dbs.source()
            .await
            .batch_execute(&format!(
                "{MEDIA}; INSERT INTO media (s3_path, format, type) SELECT '/seed/' || i, 'jpg', 1 FROM generate_series(1, {rows}) i"
            ))
            .await
            .unwrap();
        let (prefix, group) = (tk::unique("f"), tk::unique("g"));
        let config = tk::write_config(&dbs, &prefix, &group, &["media"], extra);
        if let Some(b) = &broker {
            tk::use_brokers(&config, &b.brokers());
        }
        if let Some(r) = &registry {
            tk::use_registry(&config, &r.url());
        }
        Case {
            dbs,
            broker,
            registry,
            source,
            target,
            config,
            prefix,
            group,
        }
    }

    pub fn broker(&mut self) -> &mut PrivateBroker {
        self.broker
            .as_mut()
            .expect("the case has no broker of its own")
    }

    fn brokers(&self) -> String {
        self.broker
            .as_ref()
            .map_or_else(tk::brokers, PrivateBroker::brokers)
    }

    /// The outage: SIGKILL, 5 s without a broker, a restart. Returns when it is back.
    pub async fn broker_outage(&mut self) -> Instant {
        self.broker().kill9();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let mut broker = self.broker.take().expect("the broker");
        self.broker = Some(
            blocking(move || {
                broker.restart();
                broker
            })
            .await,
        );
        Instant::now()
    }

    /// SIGKILL of the registry.
    pub fn kill_registry(&mut self) {
        self.registry
            .as_mut()
            .expect("the case has no registry of its own")
            .kill9();
    }

    /// Starts the registry again; returns when it answers.
    pub async fn restart_registry(&mut self) -> Instant {
        let mut registry = self.registry.take().expect("the registry");
        self.registry = Some(
            blocking(move || {
                registry.restart();
                registry
            })
            .await,
        );
        Instant::now()
    }

    /// The outage of a PostgreSQL server (`source` or the target): an immediate stop, 5 s
    /// down, a start (with crash recovery). Returns when it answers again.
    pub async fn postgres_outage(&mut self, source: bool) -> Instant {
        let slot = if source {
            &mut self.source
        } else {
            &mut self.target
        };
        let mut pg = slot.take().expect("the case has no such server of its own");
        pg = blocking(move || {
            pg.stop_immediate();
            pg
        })
        .await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        pg = blocking(move || {
            pg.restart();
            pg
        })
        .await;
        *slot = Some(pg);
        Instant::now()
    }

    /// After a fault that ended at `back`: the load goes on for 10 s, then the pipeline must
    /// recover ([`Case::assert_recovered`]). How many changes the load made.
    pub async fn recover_under(
        &mut self,
        load: Load,
        what: &str,
        back: Instant,
        procs: &[&Proc],
    ) -> usize {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let changes = load.end().await;
        self.assert_recovered(what, back, procs).await;
        changes
    }

    /// Identical within [`RECOVERY`] of `since` (the end of the fault), every committed event
    /// applied exactly once, `verify` clean. Prints how long the recovery took.
    pub async fn assert_recovered(&mut self, what: &str, since: Instant, procs: &[&Proc]) {
        tk::wait_identical(&self.dbs, "media", RECOVERY, procs).await;
        eprintln!(
            "fault '{what}': identical {:.1} s after the fault ended (load stopped 10 s after it)",
            since.elapsed().as_secs_f64()
        );
        self.assert_each_event_handled_once().await;
        let (code, out) = tk::verify(&self.config, &[]);
        assert_eq!(code, 0, "verify after recovery: {out}");
    }

    /// Every committed event of the topic counted once in the target's bookkeeping
    /// (`applied_events` counts each event handled: applied, or sent to the DLQ).
    pub async fn assert_each_event_handled_once(&self) {
        let topic = format!("{}.public.media", self.prefix);
        let target = self.dbs.target().await;
        let rows = target
            .query(
                "SELECT partition, next_offset, applied_events FROM tunnel.offsets WHERE topic = $1",
                &[&topic],
            )
            .await
            .unwrap();
        let book: std::collections::HashMap<i32, (i64, i64)> = rows
            .iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2))))
            .collect();
        let mut kafka = tk::kafka_config(&self.prefix, &self.group, 3);
        kafka.brokers = self.brokers();
        let (t, upto) = (topic.clone(), book.clone());
        let counts = blocking(move || tk::count_messages(&kafka, &t, &upto)).await;
        for (partition, (_, counted)) in &book {
            assert_eq!(
                counts.get(partition).copied().unwrap_or(0),
                *counted,
                "partition {partition}: events in the topic vs events counted by the target"
            );
        }
    }
}
