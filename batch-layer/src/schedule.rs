//! `strata batch run` on its cron schedule.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::BatchError;
use crate::metrics as m;
use crate::run::{BatchContext, run_once};

/// Runs every metric at each time of `batch.schedule` until `shutdown`;
/// a failed run is logged and retried at the next scheduled time.
pub async fn run_scheduled(ctx: BatchContext, shutdown: Arc<AtomicBool>) -> Result<(), BatchError> {
    let handle = m::install();
    let listen = ctx.config.batch.metrics_listen;
    let server = tokio::spawn(async move {
        if let Err(e) = strata_telemetry::serve(listen, handle).await {
            tracing::error!(listen = %listen, error = %e, "metrics endpoint failed");
        }
    });
    tracing::info!(schedule = %ctx.config.batch.schedule_text, "batch layer scheduled");
    while !shutdown.load(Ordering::Relaxed) {
        let Some(next) = ctx.config.batch.schedule.upcoming(chrono::Utc).next() else {
            tracing::warn!("the schedule has no future time; stopping");
            break;
        };
        tracing::info!(next = %next.to_rfc3339(), "next batch run");
        while chrono::Utc::now() < next {
            if shutdown.load(Ordering::Relaxed) {
                server.abort();
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if let Err(e) = run_once(&ctx, None).await {
            tracing::error!(error = %e, "batch run failed; retrying at the next scheduled time");
        }
    }
    server.abort();
    Ok(())
}
