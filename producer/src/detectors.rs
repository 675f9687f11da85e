//! The detectors a table gets, from its config and catalog: always the key scan and repairs;
//! the watermark scan when it has a watermark column; the delete scan when its key is a single
//! integer; reconciliation when `reconcile_interval_ms` is set.

use std::time::Duration;

use tunnel_shared::catalog::TableInfo;
use tunnel_shared::config::{Config, TableConfig};

use crate::capture::{ChangeDetector, KeyScan, SlotSpec, WatermarkScan};
use crate::contents::ContentScan;
use crate::deletescan::DeleteScan;
use crate::repair::RepairScan;

/// The table's detectors, in slot order.
pub fn for_table(
    config: &Config,
    table: &TableConfig,
    info: &TableInfo,
) -> Vec<Box<dyn ChangeDetector>> {
    let p = &config.producer;
    let ms = Duration::from_millis;
    let single_integer_key = info.integer_key().is_some();
    let mut detectors: Vec<Box<dyn ChangeDetector>> = vec![Box::new(KeyScan {
        interval: ms(p.insert_interval_ms),
        chunk_rows: p.scan_chunk_rows,
    })];
    if info.watermark.is_some() {
        detectors.push(Box::new(WatermarkScan {
            interval: ms(p.update_interval_ms),
            chunk_rows: p.scan_chunk_rows,
        }));
    }
    if single_integer_key {
        detectors.push(Box::new(DeleteScan {
            interval: ms(p.delete_interval_ms),
            fanout: 64,
            leaf_span: 4096,
        }));
    }
    if p.reconcile_interval_ms > 0 {
        detectors.push(Box::new(ContentScan::new(
            ms(p.reconcile_interval_ms),
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
    detectors
        .iter()
        .map(|d| SlotSpec {
            detection: d.detection(),
            interval: d.interval(),
        })
        .collect()
}
