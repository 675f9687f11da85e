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
    config: Arc<Config>,
    table: TableConfig,
    prepared: Prepared,
    detectors: Vec<Box<dyn ChangeDetector>>,
    shutdown: watch::Receiver<bool>,
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
        let prepared = setup::prepare(&config, &table).await?;
        let detectors = detectors::for_table(&config, &table, prepared.source.table());
        Ok(Self {
            config,
            table,
            prepared,
            detectors,
            shutdown,
            started: Instant::now(),
        })
    }

    /// Snapshot (if not done), then stream until shutdown.
    pub async fn run(self) -> Result<(), WorkerError> {
        let Worker {
            config,
            table,
            prepared,
            detectors,
            shutdown,
            started,
        } = self;
        let Prepared {
            mut source,
            publisher,
            checkpoint,
            keyset,
        } = prepared;
        let p = &config.producer;
        let margins = Margins::from_config(p);
        let mut snapshot = Snapshot::new(p.snapshot_chunk_rows, margins, checkpoint, keyset);
        let mut backoff = Backoff::default();
        while !snapshot.done() {
            match snapshot.run(&mut source, &publisher, &shutdown).await {
                Ok(()) if *shutdown.borrow() => return Ok(()),
                Ok(()) => {}
                Err(e) if e.is_transient() => {
                    backoff
                        .wait_after("a snapshot chunk (resuming from the last shipped key)", &e)
                        .await;
                    setup::reconnect_if_closed(&mut source, &config, &table).await?;
                }
                Err(e) => return Err(e),
            }
        }
        // streaming starts from the bounds the snapshot recorded
        let Snapshotted {
            checkpoint,
            keyset,
            remembered,
        } = snapshot.finish();
        let state = CaptureState::new(
            &detectors::specs(&detectors),
            margins,
            Duration::from_millis(p.checkpoint_interval_ms),
            checkpoint,
            keyset,
            remembered,
            started,
        );
        Stream::new(
            config.clone(),
            table,
            source,
            publisher,
            shutdown,
            detectors,
            state,
        )
        .run()
        .await
    }
}
