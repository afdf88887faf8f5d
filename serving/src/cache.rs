//! The `latest` cache: for every metric, the newest window of each group
//! key, pre-rendered as JSON and refreshed from the speed view every
//! `serving.latest_refresh`, so `GET /v1/metrics/{metric}/latest` never
//! waits on ClickHouse.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use clickhouse::Client;
use serde_json::{Map, Value as Json};
use strata_schemas::value::format_rfc3339_ms;
use strata_schemas::{Config, MetricDef};
use strata_warehouse::{self as warehouse, View};

use crate::metrics as m;

/// A pre-rendered JSON body: cloning it shares the bytes, so a hit copies
/// nothing.
pub type Body = axum::body::Bytes;

#[derive(Default)]
struct MetricCache {
    refreshed: Option<Instant>,
    /// Group key (JSON array text) → rendered row.
    rows: HashMap<String, Body>,
}

/// Newest window per group key, per metric.
#[derive(Default)]
pub struct LatestCache {
    metrics: RwLock<HashMap<String, MetricCache>>,
}

impl LatestCache {
    /// The rendered row of `key` (a JSON array of the group-by values).
    pub fn get(&self, metric: &str, key: &str) -> Option<Body> {
        let guard = self.metrics.read().unwrap_or_else(|p| p.into_inner());
        guard.get(metric)?.rows.get(key).cloned()
    }

    /// Whether the metric's cache was ever filled.
    pub fn is_warm(&self, metric: &str) -> bool {
        let guard = self.metrics.read().unwrap_or_else(|p| p.into_inner());
        guard.get(metric).is_some_and(|c| c.refreshed.is_some())
    }

    /// Refreshes one metric from the speed view.
    pub async fn refresh(
        &self,
        client: &Client,
        database: &str,
        metric: &MetricDef,
    ) -> Result<usize, warehouse::WarehouseError> {
        let mut rows = HashMap::new();
        if let Some(newest) = warehouse::newest_speed_window(client, database, metric).await? {
            // Every key active in the last few windows (sessions: gaps).
            let span = metric
                .window
                .session_gap_ms()
                .map_or(metric.window.max_extent_ms() * 3, |gap| gap * 4);
            let view = warehouse::read_view(
                client,
                database,
                metric,
                View::Speed,
                newest - span,
                newest + 1,
            )
            .await?;
            let names: Vec<&str> = metric.group_by.iter().map(|g| g.name.as_str()).collect();
            let outputs = metric.plan.output_columns();
            let mut newest_by_key: HashMap<String, &warehouse::ViewRow> = HashMap::new();
            for row in &view {
                let key = serde_json::to_string(&row.key).unwrap_or_default();
                match newest_by_key.get(&key) {
                    Some(existing) if existing.start_ms >= row.start_ms => {}
                    _ => {
                        newest_by_key.insert(key, row);
                    }
                }
            }
            for (key, row) in newest_by_key {
                let mut o = Map::new();
                o.insert("metric".into(), Json::from(metric.name.clone()));
                o.insert(
                    "window_start".into(),
                    Json::from(format_rfc3339_ms(row.start_ms)),
                );
                o.insert(
                    "window_end".into(),
                    Json::from(format_rfc3339_ms(row.end_ms)),
                );
                for (name, v) in names.iter().zip(&row.key) {
                    o.insert((*name).to_string(), v.clone());
                }
                for (c, v) in outputs.iter().zip(metric.plan.finalize(&row.acc)) {
                    o.insert(c.name.clone(), v);
                }
                o.insert("source".into(), Json::from("speed"));
                o.insert("final".into(), Json::from(row.is_final));
                rows.insert(key, Body::from(Json::Object(o).to_string()));
            }
        }
        let n = rows.len();
        metrics::gauge!(m::LATEST_CACHE_ENTRIES, "metric" => metric.name.clone()).set(n as f64);
        let mut guard = self.metrics.write().unwrap_or_else(|p| p.into_inner());
        guard.insert(
            metric.name.clone(),
            MetricCache {
                refreshed: Some(Instant::now()),
                rows,
            },
        );
        Ok(n)
    }

    /// Refreshes every metric each `interval`, forever. One loop per
    /// metric, each ticking from the start of its previous refresh: a slow
    /// refresh (a session metric reads hours of windows) neither delays the
    /// other metrics nor adds to its own period unless it takes longer than
    /// `interval`. Dropping the future stops every loop.
    pub async fn keep_fresh(
        self: Arc<Self>,
        config: Arc<Config>,
        client: Client,
        interval: Duration,
    ) {
        let mut loops = tokio::task::JoinSet::new();
        for metric in config.metrics.iter().cloned() {
            let (cache, client) = (self.clone(), client.clone());
            let database = config.clickhouse.database.clone();
            loops.spawn(async move {
                let mut ticks = tokio::time::interval(interval);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticks.tick().await;
                    if let Err(e) = cache.refresh(&client, &database, &metric).await {
                        tracing::debug!(metric = %metric.name, error = %e, "latest cache refresh failed");
                    }
                    let age = {
                        let guard = cache.metrics.read().unwrap_or_else(|p| p.into_inner());
                        guard
                            .get(&metric.name)
                            .and_then(|c| c.refreshed)
                            .map_or(f64::INFINITY, |t| t.elapsed().as_secs_f64())
                    };
                    metrics::gauge!(m::LATEST_CACHE_AGE, "metric" => metric.name.clone()).set(age);
                }
            });
        }
        while loops.join_next().await.is_some() {}
    }
}
