//! Capture: the ways the producer finds changes on a source it may only read, and what it
//! keeps between passes. Each way is a [`ChangeDetector`] ([`detector`]); the key and
//! watermark scans are here ([`scans`]), the delete scan, reconciliation and repairs in their
//! own modules. The worker runs each on its own cadence, skips it when the table's activity
//! shows it cannot find anything, and ships what [`CaptureState`] ([`state`]) makes of its
//! result, the content cache ([`cache`]) deciding which operation each row becomes.

mod cache;
mod detector;
mod scans;
mod state;

pub use detector::{ChangeDetector, Found, GoneKey, PassContext};
pub use scans::{KeyScan, WatermarkScan};
pub use state::{CaptureState, Plan, SlotSpec};
