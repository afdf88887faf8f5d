//! The master dataset's layout in object storage.
//!
//! ```text
//! <prefix>/<source>/dt=YYYY-MM-DD/hour=HH/<topic>-p<partition>-<first>-<last>-g<generation>.parquet
//! <prefix>/_strata/archive-log/<source>/<topic>/p<partition>/<seq>.json   (progress log)
//! <prefix>/_strata/archive/<source>/<topic>/p<partition>.json             (copy of the newest step)
//! ```
//!
//! A data file holds the events of one archive flush of one Kafka partition
//! (offsets `first..=last`) whose event time falls in that hour, written by
//! the owner of generation `g` (`-g<g>` at the end of the name; files of
//! releases before generations have none and are generation 0).
//!
//! **Progress is a log of create-only objects**,
//! `<prefix>/_strata/archive-log/<source>/<topic>/p<partition>/<seq>.json`:
//! each write creates the next sequence number with a conditional create
//! (`PutMode::Create`: a hard link on the local filesystem, `If-None-Match:
//! *` on S3), so of two archivers that both believe they own a partition
//! only one can write each step. A new owner claims a partition by writing
//! the next step with its own generation (= that sequence number); from then
//! on every write of the previous owner fails, its flush is dropped, and its
//! events are re-read by the new owner from the committed `next_offset`.
//! The newest step is the partition's progress, the commit point: a data
//! file counts only when one of the progress' `segments` (offsets committed
//! by one generation) covers it, so a crash between uploads never makes a
//! partial flush visible, and a file a fenced owner uploaded late is never
//! counted, even once the new owner's progress passes its offsets. The new
//! owner deletes the files of the flush listed as pending. The last steps
//! are kept, older ones deleted; `p<partition>.json` next to the log is a
//! copy of the newest step for operators (and where progress lived before
//! the log: read when a partition has no log yet).

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Datelike, Timelike};
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
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

/// Steps of a partition's progress log kept behind the newest one (a reader
/// that listed an older step can still read it).
const KEPT_STEPS: u64 = 4;

/// Offsets `[first_offset, next_offset)` of a partition committed by the
/// owner of one generation: its files are part of the dataset.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// The owner's generation (the log step at which it claimed).
    pub generation: u64,
    /// First offset committed by this owner in this run of offsets.
    pub first_offset: i64,
    /// First offset after them.
    pub next_offset: i64,
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
    /// Wall-clock time of the last record seen (epoch ms), for operators.
    /// Whether a partition holds the archive horizon back is decided by
    /// comparing `next_offset` with the broker's high-water mark instead
    /// (this time is only saved at a flush).
    #[serde(default)]
    pub last_record_at_ms: i64,
    /// Generation of the owner that wrote this step.
    #[serde(default)]
    pub generation: u64,
    /// The committed offsets, by generation, in offset order; a data file
    /// belongs to the dataset iff one of them covers its offsets.
    #[serde(default)]
    pub segments: Vec<Segment>,
}

impl Progress {
    /// Whether `file` is part of the dataset by this progress.
    pub fn commits(&self, file: &DataFile) -> bool {
        self.segments.iter().any(|s| {
            s.generation == file.generation
                && s.first_offset <= file.first_offset
                && file.last_offset < s.next_offset
        })
    }

    /// Records `[first, next)` as committed by `generation`.
    pub fn commit_offsets(&mut self, generation: u64, first: i64, next: i64) {
        if let Some(last) = self.segments.last_mut()
            && last.generation == generation
            && last.next_offset == first
        {
            last.next_offset = next;
        } else {
            self.segments.push(Segment {
                generation,
                first_offset: first,
                next_offset: next,
            });
        }
        self.next_offset = next;
    }

    /// A progress written before generations existed: its files (generation
    /// 0) below `next_offset` are committed.
    fn upgrade(mut self) -> Progress {
        if self.segments.is_empty() && self.next_offset > 0 {
            self.segments.push(Segment {
                generation: 0,
                first_offset: 0,
                next_offset: self.next_offset,
            });
        }
        self
    }
}

/// The outcome of writing a progress step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Written: this step is now the partition's progress.
    Written,
    /// Another writer created this step first: the caller no longer owns
    /// the partition.
    Fenced,
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
    /// Generation of the owner that wrote it (0: before generations).
    pub generation: u64,
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

    /// Every object below `prefix`.
    async fn list(&self, prefix: &Path) -> Result<Vec<object_store::ObjectMeta>, BatchError> {
        self.store
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(|e| BatchError::store(format!("list {prefix}"), e))
    }

    /// The hour directory of `source` holding events of `hour_start_ms`.
    pub fn hour_dir(&self, source: &str, hour_start_ms: i64) -> Path {
        self.join(&hour_dir_relative(source, hour_start_ms))
    }

    /// The object name of one flush's events of one hour, written by the
    /// owner of `generation`.
    #[allow(clippy::too_many_arguments)]
    pub fn data_path(
        &self,
        source: &str,
        hour_start_ms: i64,
        topic: &str,
        partition: i32,
        first_offset: i64,
        last_offset: i64,
        generation: u64,
    ) -> Path {
        self.join(&format!(
            "{}/{topic}-p{partition}-{first_offset:020}-{last_offset:020}-g{generation}.parquet",
            hour_dir_relative(source, hour_start_ms)
        ))
    }

    /// The operators' copy of the newest progress step (and the progress
    /// itself before the log existed).
    fn progress_path(&self, source: &str, topic: &str, partition: i32) -> Path {
        self.join(&format!(
            "_strata/archive/{source}/{topic}/p{partition}.json"
        ))
    }

    fn log_dir(&self, source: &str, topic: &str, partition: i32) -> Path {
        self.join(&format!(
            "_strata/archive-log/{source}/{topic}/p{partition}"
        ))
    }

    fn step_path(&self, source: &str, topic: &str, partition: i32, step: u64) -> Path {
        self.join(&format!(
            "_strata/archive-log/{source}/{topic}/p{partition}/{step:020}.json"
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

    /// The newest step of one partition's progress log and the progress it
    /// holds; step 0 is the progress of a release before the log (or none).
    pub async fn load_progress(
        &self,
        source: &str,
        topic: &str,
        partition: i32,
    ) -> Result<Option<(u64, Progress)>, BatchError> {
        // A step listed here can be deleted before it is read when writers
        // race ahead: list again.
        for _ in 0..10 {
            let Some(step) = self.newest_step(source, topic, partition).await? else {
                let legacy = self
                    .read_progress(&self.progress_path(source, topic, partition))
                    .await?;
                return Ok(legacy.map(|p| (0, p.upgrade())));
            };
            if let Some(p) = self
                .read_progress(&self.step_path(source, topic, partition, step))
                .await?
            {
                return Ok(Some((step, p.upgrade())));
            }
        }
        Err(BatchError::Usage(format!(
            "the archive progress of {topic}/{partition} changes too fast to be read; are many archivers fighting over it?"
        )))
    }

    /// The number of the newest step of a partition's progress log.
    async fn newest_step(
        &self,
        source: &str,
        topic: &str,
        partition: i32,
    ) -> Result<Option<u64>, BatchError> {
        let dir = self.log_dir(source, topic, partition);
        let objects = self.list(&dir).await?;
        Ok(objects
            .iter()
            .filter_map(|m| {
                m.location
                    .filename()?
                    .strip_suffix(".json")?
                    .parse::<u64>()
                    .ok()
            })
            .max())
    }

    /// Writes step `step` of a partition's progress log, unless another
    /// writer created it first ([`Step::Fenced`]). Then updates the
    /// operators' copy and deletes old steps (both best effort).
    pub async fn store_progress(
        &self,
        source: &str,
        topic: &str,
        partition: i32,
        step: u64,
        progress: &Progress,
    ) -> Result<Step, BatchError> {
        let path = self.step_path(source, topic, partition, step);
        let bytes = serde_json::to_vec_pretty(progress)
            .map_err(|e| BatchError::Usage(format!("encode progress: {e}")))?;
        let created = self
            .store
            .put_opts(
                &path,
                PutPayload::from(bytes.clone()),
                PutOptions::from(PutMode::Create),
            )
            .await;
        match created {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. }) => return Ok(Step::Fenced),
            Err(e) => return Err(BatchError::store(format!("create {path}"), e)),
        }
        // Steps older than KEPT_STEPS are deleted, so creating one of those
        // numbers again succeeds: a writer that fell that far behind (frozen
        // through several flushes of the new owner) must still learn that it
        // lost the partition. Its step is below the newest, never read.
        if self
            .newest_step(source, topic, partition)
            .await?
            .is_some_and(|newest| newest > step)
        {
            if let Err(e) = self.delete(&path).await {
                tracing::debug!(error = %e, "cannot delete a stale progress step");
            }
            return Ok(Step::Fenced);
        }
        let copy = self.progress_path(source, topic, partition);
        if let Err(e) = self.put(&copy, bytes).await {
            tracing::debug!(error = %e, "cannot update the progress copy");
        }
        if step > KEPT_STEPS {
            let old = self.step_path(source, topic, partition, step - KEPT_STEPS - 1);
            if let Err(e) = self.delete(&old).await {
                tracing::debug!(error = %e, "cannot delete an old progress step");
            }
        }
        Ok(Step::Written)
    }

    async fn read_progress(&self, path: &Path) -> Result<Option<Progress>, BatchError> {
        match self.store.get(path).await {
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

    /// The progress of every archived partition of `source`, by (topic, partition).
    pub async fn all_progress(
        &self,
        source: &str,
    ) -> Result<BTreeMap<(String, i32), Progress>, BatchError> {
        // Partitions with a log (…/<topic>/p<N>/<step>.json) or only the
        // progress of a release before the log (…/<topic>/p<N>.json).
        let mut partitions = std::collections::BTreeSet::new();
        for (root, depth) in [("_strata/archive-log", 3), ("_strata/archive", 2)] {
            let prefix = self.join(&format!("{root}/{source}"));
            let objects = self.list(&prefix).await?;
            for meta in objects {
                let parts: Vec<_> = meta.location.parts().collect();
                let n = parts.len();
                if n < depth {
                    continue;
                }
                let topic = parts[n - depth].as_ref().to_string();
                let name = parts[n - depth + 1].as_ref();
                let name = name.strip_suffix(".json").unwrap_or(name);
                if let Some(partition) = name.strip_prefix('p').and_then(|p| p.parse::<i32>().ok())
                {
                    partitions.insert((topic, partition));
                }
            }
        }
        let mut out = BTreeMap::new();
        for (topic, partition) in partitions {
            if let Some((_, progress)) = self.load_progress(source, &topic, partition).await? {
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
            let objects = self.list(&dir).await?;
            for meta in objects {
                let Some(file) = parse_data_file(&meta.location, meta.size) else {
                    continue;
                };
                let committed = progress
                    .get(&(file.topic.clone(), file.partition))
                    .is_some_and(|p| p.commits(&file));
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

    /// Every committed data file of `source`: the dataset as the batch
    /// layer sees it (tests, checks).
    pub async fn all_committed_files(&self, source: &str) -> Result<Vec<DataFile>, BatchError> {
        let progress = self.all_progress(source).await?;
        Ok(self
            .all_files(source)
            .await?
            .into_iter()
            .filter(|f| {
                progress
                    .get(&(f.topic.clone(), f.partition))
                    .is_some_and(|p| p.commits(f))
            })
            .collect())
    }

    /// Every data file of `source` (tests, `strata archive` checks).
    pub async fn all_files(&self, source: &str) -> Result<Vec<DataFile>, BatchError> {
        let root = self.join(source);
        let objects = self.list(&root).await?;
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

/// Parses `<topic>-p<partition>-<first>-<last>[-g<generation>].parquet`.
fn parse_data_file(path: &Path, size: u64) -> Option<DataFile> {
    let name = path.filename()?.strip_suffix(".parquet")?;
    // A last offset is all digits, so a trailing `-g<digits>` is always the
    // generation.
    let (name, generation) = match name.rsplit_once('-') {
        Some((rest, g)) if g.starts_with('g') => (rest, g[1..].parse().ok()?),
        _ => (name, 0),
    };
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
        generation,
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
        let path = lake.data_path("page_views", hour_of(t), "page-views.v1", 3, 10, 99, 7);
        assert_eq!(
            path.as_ref(),
            "page_views/dt=2026-11-22/hour=10/page-views.v1-p3-00000000000000000010-00000000000000000099-g7.parquet"
        );
        let file = parse_data_file(&path, 7).unwrap();
        assert_eq!(
            (
                file.topic.as_str(),
                file.partition,
                file.first_offset,
                file.last_offset,
                file.generation
            ),
            ("page-views.v1", 3, 10, 99, 7)
        );
        // Names of releases before generations: generation 0.
        let legacy = Path::from(
            "page_views/dt=2026-11-22/hour=10/page-views.v1-p3-00000000000000000010-00000000000000000099.parquet",
        );
        let file = parse_data_file(&legacy, 7).unwrap();
        assert_eq!((file.last_offset, file.generation), (99, 0));
    }

    /// A writer frozen while the new owner wrote more steps than are kept
    /// finds its next step deleted, not taken: it must still be fenced.
    #[tokio::test]
    async fn a_writer_behind_the_kept_steps_is_fenced() {
        let dir = tempfile::tempdir().unwrap();
        let section = ObjectStoreSection {
            url: format!("file://{}", dir.path().display()),
            endpoint: None,
            region: None,
        };
        let lake = Lake::open(&section, dir.path()).unwrap();
        let progress = |next_offset| Progress {
            next_offset,
            ..Progress::default()
        };
        // The stale owner wrote step 1; the new owner claimed step 2 and
        // went on to step 8 (steps 1 to 3 deleted meanwhile).
        for step in 1..=8 {
            let written = lake
                .store_progress("s", "t", 0, step, &progress(step as i64 * 10))
                .await
                .unwrap();
            assert_eq!(written, Step::Written, "step {step}");
        }
        assert_eq!(lake.newest_step("s", "t", 0).await.unwrap(), Some(8));
        let stale = lake
            .store_progress("s", "t", 0, 2, &progress(999))
            .await
            .unwrap();
        assert_eq!(stale, Step::Fenced);
        let (step, loaded) = lake.load_progress("s", "t", 0).await.unwrap().unwrap();
        assert_eq!((step, loaded.next_offset), (8, 80));
        // The stale step is gone again.
        let steps: Vec<String> = std::fs::read_dir(dir.path().join("_strata/archive-log/s/t/p0"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !steps.iter().any(|s| s.ends_with("00002.json")),
            "{steps:?}"
        );
    }
}
