//! The master dataset's layout in object storage.
//!
//! ```text
//! <prefix>/<source>/dt=YYYY-MM-DD/hour=HH/<topic>-p<partition>-<first>-<last>.parquet
//! <prefix>/_strata/archive/<source>/<topic>/p<partition>.json      (progress)
//! ```
//!
//! A data file holds the events of one archive flush of one Kafka partition
//! (offsets `first..=last`) whose event time falls in that hour. The
//! progress object of a partition is the commit point: a data file counts
//! only when its `last` offset is below the progress' `next_offset`, so a
//! crash between uploads never makes a partial flush visible, and the
//! restarted archiver deletes the files of the flush it did not finish
//! before writing it again.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Datelike, Timelike};
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use strata_schemas::config::ObjectStoreSection;
use strata_schemas::window::boundary_at_or_before;

use crate::BatchError;

const HOUR_MS: i64 = 3_600_000;

/// The object store holding the master dataset, and where in it.
#[derive(Clone, Debug)]
pub struct Lake {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    url: String,
}

/// Where a partition's archive stands: written only after every file of a
/// flush was uploaded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// First offset not yet archived; restart point.
    pub next_offset: i64,
    /// Largest event time archived so far (`i64::MIN` before any event).
    pub max_event_ms: i64,
    /// Events archived.
    pub events: u64,
    /// The flush being uploaded, if the archiver died during one: these
    /// objects are not part of the dataset and are deleted on restart.
    #[serde(default)]
    pub pending: Vec<String>,
    /// Wall-clock time of the last record seen (epoch ms); an idle
    /// partition does not hold the archive horizon back.
    #[serde(default)]
    pub last_record_at_ms: i64,
}

/// A data file of the master dataset, as its name describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataFile {
    /// Full object path.
    pub path: Path,
    /// Size in bytes.
    pub size: u64,
    /// Kafka topic.
    pub topic: String,
    /// Kafka partition.
    pub partition: i32,
    /// First offset of the flush.
    pub first_offset: i64,
    /// Last offset of the flush.
    pub last_offset: i64,
}

impl Lake {
    /// Opens the configured store: `file://<dir>` (relative to `base_dir`)
    /// or `s3://<bucket>/<prefix>` with the endpoint and region from config
    /// and credentials from the AWS environment variables.
    pub fn open(
        section: &ObjectStoreSection,
        base_dir: &std::path::Path,
    ) -> Result<Lake, BatchError> {
        let url = section.url.trim();
        if let Some(dir) = url.strip_prefix("file://") {
            let dir = if std::path::Path::new(dir).is_absolute() {
                std::path::PathBuf::from(dir)
            } else {
                base_dir.join(dir)
            };
            std::fs::create_dir_all(&dir).map_err(|e| {
                BatchError::Usage(format!(
                    "object_store.url {url:?}: cannot create {}: {e}",
                    dir.display()
                ))
            })?;
            let store = LocalFileSystem::new_with_prefix(&dir)
                .map_err(|e| BatchError::store(format!("open {}", dir.display()), e))?;
            return Ok(Lake {
                store: Arc::new(store),
                prefix: Path::default(),
                url: url.to_string(),
            });
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(BatchError::Usage(format!(
                    "object_store.url {url:?} names no bucket; write s3://<bucket>/<prefix>"
                )));
            }
            let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
            if let Some(endpoint) = &section.endpoint {
                builder = builder
                    .with_endpoint(endpoint)
                    .with_allow_http(endpoint.starts_with("http://"));
            }
            builder = builder.with_region(section.region.as_deref().unwrap_or("us-east-1"));
            let store = builder
                .build()
                .map_err(|e| BatchError::store(format!("open {url}"), e))?;
            return Ok(Lake {
                store: Arc::new(store),
                prefix: Path::from(prefix.trim_matches('/')),
                url: url.to_string(),
            });
        }
        Err(BatchError::Usage(format!(
            "object_store.url {url:?} is not supported; write file://<dir> or s3://<bucket>/<prefix>"
        )))
    }

    /// The URL the lake was opened from (for logs).
    pub fn url(&self) -> &str {
        &self.url
    }

    fn join(&self, relative: &str) -> Path {
        if self.prefix.as_ref().is_empty() {
            Path::from(relative)
        } else {
            Path::from(format!("{}/{relative}", self.prefix))
        }
    }

    /// The hour directory of `source` holding events of `hour_start_ms`.
    pub fn hour_dir(&self, source: &str, hour_start_ms: i64) -> Path {
        self.join(&hour_dir_relative(source, hour_start_ms))
    }

    /// The object name of one flush's events of one hour.
    pub fn data_path(
        &self,
        source: &str,
        hour_start_ms: i64,
        topic: &str,
        partition: i32,
        first_offset: i64,
        last_offset: i64,
    ) -> Path {
        self.join(&format!(
            "{}/{topic}-p{partition}-{first_offset:020}-{last_offset:020}.parquet",
            hour_dir_relative(source, hour_start_ms)
        ))
    }

    fn progress_path(&self, source: &str, topic: &str, partition: i32) -> Path {
        self.join(&format!(
            "_strata/archive/{source}/{topic}/p{partition}.json"
        ))
    }

    /// Uploads one object atomically (a reader sees all of it or nothing).
    pub async fn put(&self, path: &Path, bytes: Vec<u8>) -> Result<(), BatchError> {
        self.store
            .put(path, PutPayload::from(bytes))
            .await
            .map_err(|e| BatchError::store(format!("upload {path}"), e))?;
        Ok(())
    }

    /// Downloads one object.
    pub async fn get(&self, path: &Path) -> Result<bytes::Bytes, BatchError> {
        let result = self
            .store
            .get(path)
            .await
            .map_err(|e| BatchError::store(format!("download {path}"), e))?;
        result
            .bytes()
            .await
            .map_err(|e| BatchError::store(format!("download {path}"), e))
    }

    /// Deletes one object; a missing object is not an error.
    pub async fn delete(&self, path: &Path) -> Result<(), BatchError> {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(BatchError::store(format!("delete {path}"), e)),
        }
    }

    /// The progress of one partition, if it was ever archived.
    pub async fn load_progress(
        &self,
        source: &str,
        topic: &str,
        partition: i32,
    ) -> Result<Option<Progress>, BatchError> {
        let path = self.progress_path(source, topic, partition);
        match self.store.get(&path).await {
            Ok(result) => {
                let bytes = result
                    .bytes()
                    .await
                    .map_err(|e| BatchError::store(format!("download {path}"), e))?;
                serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                    BatchError::Usage(format!(
                        "archive progress {path} is not valid ({e}); delete it to re-archive the partition from its first offset"
                    ))
                })
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(BatchError::store(format!("download {path}"), e)),
        }
    }

    /// Replaces the progress of one partition (atomic put).
    pub async fn store_progress(
        &self,
        source: &str,
        topic: &str,
        partition: i32,
        progress: &Progress,
    ) -> Result<(), BatchError> {
        let path = self.progress_path(source, topic, partition);
        let bytes = serde_json::to_vec_pretty(progress)
            .map_err(|e| BatchError::Usage(format!("encode progress: {e}")))?;
        self.put(&path, bytes).await
    }

    /// The progress of every archived partition of `source`, by (topic, partition).
    pub async fn all_progress(
        &self,
        source: &str,
    ) -> Result<BTreeMap<(String, i32), Progress>, BatchError> {
        let prefix = self.join(&format!("_strata/archive/{source}"));
        let objects: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| BatchError::store(format!("list {prefix}"), e))?;
        let mut out = BTreeMap::new();
        for meta in objects {
            let parts: Vec<_> = meta.location.parts().collect();
            let n = parts.len();
            if n < 2 {
                continue;
            }
            let topic = parts[n - 2].as_ref().to_string();
            let Some(partition) = parts[n - 1]
                .as_ref()
                .strip_prefix('p')
                .and_then(|p| p.strip_suffix(".json"))
                .and_then(|p| p.parse::<i32>().ok())
            else {
                continue;
            };
            if let Some(progress) = self.load_progress(source, &topic, partition).await? {
                out.insert((topic, partition), progress);
            }
        }
        Ok(out)
    }

    /// The committed data files of `source` whose hour overlaps
    /// `[from_ms, to_ms)`: only the hour directories in range are listed, and
    /// files of unfinished flushes are left out.
    pub async fn committed_files(
        &self,
        source: &str,
        from_ms: i64,
        to_ms: i64,
        progress: &BTreeMap<(String, i32), Progress>,
    ) -> Result<Vec<DataFile>, BatchError> {
        let mut files = Vec::new();
        let mut hour = hour_of(from_ms);
        while hour < to_ms {
            let dir = self.hour_dir(source, hour);
            let objects: Vec<_> = self
                .store
                .list(Some(&dir))
                .try_collect()
                .await
                .map_err(|e| BatchError::store(format!("list {dir}"), e))?;
            for meta in objects {
                let Some(file) = parse_data_file(&meta.location, meta.size) else {
                    continue;
                };
                let committed = progress
                    .get(&(file.topic.clone(), file.partition))
                    .is_some_and(|p| file.last_offset < p.next_offset);
                if committed {
                    files.push(file);
                }
            }
            hour += HOUR_MS;
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(files)
    }

    /// Earliest hour holding data of `source`, from the `dt=` / `hour=`
    /// directories (a listing of two levels, not of every file).
    pub async fn first_hour(&self, source: &str) -> Result<Option<i64>, BatchError> {
        let root = self.join(source);
        let days = self
            .store
            .list_with_delimiter(Some(&root))
            .await
            .map_err(|e| BatchError::store(format!("list {root}"), e))?;
        let mut day_names: Vec<String> = days
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .filter(|d| d.starts_with("dt="))
            .collect();
        day_names.sort();
        for day in day_names {
            let dir = self.join(&format!("{source}/{day}"));
            let hours = self
                .store
                .list_with_delimiter(Some(&dir))
                .await
                .map_err(|e| BatchError::store(format!("list {dir}"), e))?;
            let mut hs: Vec<u32> = hours
                .common_prefixes
                .iter()
                .filter_map(|p| p.filename()?.strip_prefix("hour=")?.parse().ok())
                .collect();
            hs.sort_unstable();
            if let (Some(h), Some(date)) = (
                hs.first(),
                day.strip_prefix("dt=")
                    .and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok()),
            ) {
                let start = date
                    .and_hms_opt(*h, 0, 0)
                    .map(|t| t.and_utc().timestamp_millis());
                if start.is_some() {
                    return Ok(start);
                }
            }
        }
        Ok(None)
    }

    /// Every data file of `source` (tests, `strata archive` checks).
    pub async fn all_files(&self, source: &str) -> Result<Vec<DataFile>, BatchError> {
        let root = self.join(source);
        let objects: Vec<_> = self
            .store
            .list(Some(&root))
            .try_collect()
            .await
            .map_err(|e| BatchError::store(format!("list {root}"), e))?;
        let mut files: Vec<DataFile> = objects
            .iter()
            .filter_map(|m| parse_data_file(&m.location, m.size))
            .collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(files)
    }
}

fn hour_dir_relative(source: &str, hour_start_ms: i64) -> String {
    let t = DateTime::from_timestamp_millis(hour_start_ms).unwrap_or_default();
    format!(
        "{source}/dt={:04}-{:02}-{:02}/hour={:02}",
        t.year(),
        t.month(),
        t.day(),
        t.hour()
    )
}

/// Start of the hour holding `ms`: the directory its event goes to.
pub fn hour_of(ms: i64) -> i64 {
    boundary_at_or_before(ms, HOUR_MS)
}

/// Parses `<topic>-p<partition>-<first>-<last>.parquet`.
fn parse_data_file(path: &Path, size: u64) -> Option<DataFile> {
    let name = path.filename()?.strip_suffix(".parquet")?;
    let mut parts = name.rsplitn(4, '-');
    let last = parts.next()?.parse().ok()?;
    let first = parts.next()?.parse().ok()?;
    let partition = parts.next()?.strip_prefix('p')?.parse().ok()?;
    let topic = parts.next()?.to_string();
    Some(DataFile {
        path: path.clone(),
        size,
        topic,
        partition,
        first_offset: first,
        last_offset: last,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_file_names_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let section = ObjectStoreSection {
            url: format!("file://{}", dir.path().display()),
            endpoint: None,
            region: None,
        };
        let lake = Lake::open(&section, dir.path()).unwrap();
        // 2026-11-22T10:59:59.999Z belongs to hour 10.
        let t = 1_795_345_199_999;
        let path = lake.data_path("page_views", hour_of(t), "page-views.v1", 3, 10, 99);
        assert_eq!(
            path.as_ref(),
            "page_views/dt=2026-11-22/hour=10/page-views.v1-p3-00000000000000000010-00000000000000000099.parquet"
        );
        let file = parse_data_file(&path, 7).unwrap();
        assert_eq!(
            (
                file.topic.as_str(),
                file.partition,
                file.first_offset,
                file.last_offset
            ),
            ("page-views.v1", 3, 10, 99)
        );
    }
}
