//! The garbage collector in the background of `serve`: `berth_storage::gc::collect` every
//! `gc.interval_secs`, the first run after a random part of the interval so that replicas
//! started together spread out. A failed run is logged and the next one tries again.

use crate::config::GcConfig;
use berth_storage::{BlobStore, Meta};
use std::time::Duration;

/// Starts the periodic collector, if enabled; it runs until the runtime stops (a run cut
/// short rolls back its current item's transaction and leaves the rest for the next run).
pub fn spawn(config: &GcConfig, meta: Meta, blobs: BlobStore) -> Option<tokio::task::JoinHandle<()>> {
    if !config.enabled {
        tracing::info!("background garbage collection is off (gc.enabled = false)");
        return None;
    }
    let interval = Duration::from_secs(config.interval_secs.max(1));
    let opts = config.options();
    let first = interval.mul_f64(rand::random::<f64>());
    tracing::info!(
        interval_secs = interval.as_secs(),
        grace_secs = opts.grace.as_secs(),
        upload_expiry_secs = opts.upload_expiry.as_secs(),
        first_in_secs = first.as_secs(),
        "background garbage collection on"
    );
    Some(tokio::spawn(async move {
        tokio::time::sleep(first).await;
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if let Err(e) = berth_storage::gc::collect(&meta, &blobs, &opts).await {
                tracing::warn!(error = %e, "garbage collection failed; retrying at the next interval");
            }
        }
    }))
}
