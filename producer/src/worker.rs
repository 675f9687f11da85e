//! One table's worker: sets the table up ([`crate::setup`]), runs the snapshot until it is
//! done ([`crate::snapshot`]), then streams changes ([`crate::stream`]) until asked to stop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tunnel_shared::config::{Config, TableConfig};
use tunnel_shared::fault::Classify;
use tunnel_shared::retry::Backoff;

use crate::capture::{CaptureState, ChangeDetector};
use crate::detectors;
use crate::error::WorkerError;
use crate::horizon::Margins;
use crate::setup::{self, Prepared};
use crate::snapshot::{Snapshot, Snapshotted};
use crate::stream::Stream;

pub struct Worker {
    prepared: Prepared,
    detectors: Vec<Box<dyn ChangeDetector>>,
    /// When the worker started: detectors are first due from then.
    started: Instant,
}

impl Worker {
    /// Connects, registers schemas, creates topics, fences older producers of this table and
    /// loads its checkpoint.
    pub async fn start(
        config: Arc<Config>,
        table: TableConfig,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, WorkerError> {
        let prepared = setup::prepare(config, table.clone(), shutdown).await?;
        let link = &prepared.link;
        let detectors = detectors::for_table(link.config(), &table, link.source().table());
        Ok(Self {
            prepared,
            detectors,
            started: Instant::now(),
        })
    }

    /// Snapshot (if not done), then stream until shutdown.
    pub async fn run(self) -> Result<(), WorkerError> {
        let Prepared {
            mut link,
            checkpoint,
            shipped,
        } = self.prepared;
        let p = &link.config().producer;
        let (margins, chunk_rows) = (Margins::from_config(p), p.snapshot_chunk_rows);
        let checkpoint_interval = Duration::from_millis(p.checkpoint_interval_ms);
        let mut snapshot = Snapshot::new(chunk_rows, margins, checkpoint, shipped);
        let mut backoff = Backoff::default();
        while !snapshot.done() {
            let (source, publisher, stop) = link.ends();
            match snapshot.run(source, publisher, stop).await {
                Ok(()) if link.stopping() => return Ok(()),
                Ok(()) => {}
                Err(e) if e.is_transient() => {
                    backoff
                        .wait_after("a snapshot chunk (resuming from the last shipped key)", &e)
                        .await;
                    link.reconnect_if_closed().await?;
                }
                Err(e) => return Err(e),
            }
        }
        // streaming starts from the bounds the snapshot recorded
        let Snapshotted {
            checkpoint,
            shipped,
            remembered,
        } = snapshot.finish();
        let state = CaptureState::new(
            &detectors::specs(&self.detectors),
            margins,
            checkpoint_interval,
            checkpoint,
            shipped,
            remembered,
            self.started,
        );
        Stream::new(link, self.detectors, state).run().await
    }
}
