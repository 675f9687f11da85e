//! The background lane: one pass at a time (watermark, delete scan, reconciliation) on a source
//! connection of its own, in a task of its own, so that the key scan goes on while it reads.
//! The lane only reads; what the pass found is shipped by the stream, in order with the
//! foreground's passes.

use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::capture::{ChangeDetector, Found, PassContext};
use crate::checkpoint::Checkpoint;
use crate::error::SourceError;
use crate::horizon::Bounds;
use crate::keyset::KeySet;
use crate::source::Source;

/// What a background pass needs, owned: it reads while the stream goes on.
pub(super) struct Start {
    pub slot: usize,
    pub detector: Box<dyn ChangeDetector>,
    pub source: Source,
    pub bounds: Bounds,
    pub shipped: Option<KeySet>,
    pub checkpoint: Checkpoint,
}

/// A background pass that ended: the detector and connection come back with its result.
pub(super) struct Done {
    pub slot: usize,
    pub detector: Box<dyn ChangeDetector>,
    pub source: Source,
    pub result: Result<Found, SourceError>,
    /// How long the pass kept the source busy.
    pub took: Duration,
    pub read_rows: u64,
}

/// The lane: its connection while idle, the pass under way.
#[derive(Default)]
pub(super) struct Lane {
    idle_source: Option<Source>,
    running: Option<JoinHandle<Done>>,
}

impl Lane {
    /// The lane's connection when no pass is under way and it is still open.
    pub fn take_source(&mut self) -> Option<Source> {
        self.idle_source.take().filter(|s| !s.is_closed())
    }

    pub fn put_source(&mut self, source: Source) {
        if !source.is_closed() {
            self.idle_source = Some(source);
        }
    }

    pub fn busy(&self) -> bool {
        self.running.is_some()
    }

    /// Starts the pass in a task of its own (in the caller's span).
    pub fn start(&mut self, s: Start) {
        let task = async move {
            let Start {
                slot,
                mut detector,
                mut source,
                bounds,
                shipped,
                checkpoint,
            } = s;
            let started = Instant::now();
            let read_before = source.read_rows();
            let ctx = PassContext {
                source: &mut source,
                bounds: &bounds,
                shipped: shipped.as_ref(),
                checkpoint: &checkpoint,
            };
            let result = detector.pass(ctx).await;
            let read_rows = source.read_rows() - read_before;
            Done {
                slot,
                detector,
                source,
                result,
                took: started.elapsed(),
                read_rows,
            }
        };
        self.running = Some(tokio::spawn(task.in_current_span()));
    }

    /// The pass under way, once it ends (never, while none is); `None` if its task panicked:
    /// its detector is lost with it.
    pub async fn finished(&mut self) -> Option<Done> {
        let Some(handle) = self.running.as_mut() else {
            return std::future::pending().await;
        };
        let joined = handle.await;
        self.running = None;
        joined.ok()
    }

    /// Stops the pass under way (the stream ends).
    pub fn abort(&mut self) {
        if let Some(handle) = self.running.take() {
            handle.abort();
        }
    }
}
