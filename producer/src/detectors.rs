//! The detectors a table gets, from its config and catalog. In poll capture: always the key
//! scan and repairs; the watermark scan when it has a watermark column; the delete scan when
//! its key is a single integer; reconciliation when `reconcile_interval_ms` is set. In trigger
//! capture: the change table's scan, reconciliation (a safety net, and what closes the gap of
//! a switch from poll capture) and repairs.

use std::time::Duration;

use tunnel_shared::catalog::TableInfo;
use tunnel_shared::config::{Capture, Config, TableConfig};
use tunnel_shared::event::Detection;

use crate::capture::{ChangeDetector, KeyScan, SlotSpec, WatermarkScan};
use crate::contents::ContentScan;
use crate::deletescan::DeleteScan;
use crate::repair::RepairScan;
use crate::trigger::{Objects, TriggerScan};

/// The shortest interval of reconciliation in trigger capture.
const TRIGGER_RECONCILE_MS: u64 = 60_000;

/// The table's detectors, in slot order.
pub fn for_table(
    config: &Config,
    table: &TableConfig,
    info: &TableInfo,
) -> Vec<Box<dyn ChangeDetector>> {
    let p = &config.producer;
    let ms = Duration::from_millis;
    let single_integer_key = info.integer_key().is_some();
    let trigger = table.capture == Capture::Trigger;
    let mut detectors: Vec<Box<dyn ChangeDetector>> = if trigger {
        vec![Box::new(TriggerScan::new(
            ms(p.insert_interval_ms),
            p.scan_chunk_rows,
            Objects::new(&config.source, table),
        ))]
    } else {
        vec![Box::new(KeyScan {
            interval: ms(p.insert_interval_ms),
            chunk_rows: p.scan_chunk_rows,
        })]
    };
    if info.watermark.is_some() && !trigger {
        detectors.push(Box::new(WatermarkScan {
            interval: ms(p.update_interval_ms),
            chunk_rows: p.scan_chunk_rows,
        }));
    }
    if single_integer_key && !trigger {
        detectors.push(Box::new(DeleteScan {
            interval: ms(p.delete_interval_ms),
            leaf_keys: 4096,
            max_fanout: 65_536,
        }));
    }
    if p.reconcile_interval_ms > 0 {
        // in trigger capture it only looks for what the triggers could not see (writes while
        // they were disabled, a switch from poll capture): once a minute at most
        let interval = if trigger {
            p.reconcile_interval_ms.max(TRIGGER_RECONCILE_MS)
        } else {
            p.reconcile_interval_ms
        };
        detectors.push(Box::new(ContentScan::new(
            ms(interval),
            ms(p.reconcile_full_interval_ms),
            single_integer_key,
            &config.target,
            table,
            config.topic(table),
        )));
    }
    detectors.push(Box::new(RepairScan::new(
        ms(p.repair_interval_ms),
        &config.kafka,
        config.repair_topic(),
        table.qualified(),
    )));
    detectors
}

/// The detectors as the capture state sees them.
pub fn specs(detectors: &[Box<dyn ChangeDetector>]) -> Vec<SlotSpec> {
    let detections: Vec<Detection> = detectors.iter().map(|d| d.detection()).collect();
    detectors
        .iter()
        .map(|d| SlotSpec {
            detection: d.detection(),
            interval: d.interval(),
            priority: priority(d.detection(), &detections),
        })
        .collect()
}

/// How much a background detector's wait counts against the others' when the source cost
/// budget lets one run. With a single integer key, reconciliation compares only the rows
/// written since its last pass, which finds every insert and update (with or without
/// `updated_at`), and the delete scan finds deletes: those two go first, and the watermark
/// scan, which reads the whole table for what they also find, runs when it has waited four
/// times as long. Otherwise the watermark scan finds updates and reconciliation compares the
/// whole table: the other way round.
fn priority(d: Detection, all: &[Detection]) -> u32 {
    let by_versions = all.contains(&Detection::DeleteScan) && all.contains(&Detection::Reconcile);
    match d {
        Detection::DeleteScan => 4,
        Detection::Reconcile if by_versions => 4,
        Detection::Watermark if !by_versions => 4,
        _ => 1,
    }
}
