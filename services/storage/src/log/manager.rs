//! [`LogManager`]: every partition log of a storage node, one directory per
//! partition under the data directory.
//!
//! ```text
//! <data_dir>/orders-0/partition.json   {"topic":"orders","topic_id":"…","partition":0}
//! <data_dir>/orders-0/00000000000000000000.log …
//! <data_dir>/orders-1/…
//! <data_dir>/orders-1.<uuid>-delete    a deletion interrupted by a crash
//! ```
//!
//! `partition.json` is written before any segment (durably, unless the log's
//! flush policy is [`FlushPolicy::Os`]); deletions rename the directory to
//! `…-delete` first, and [`LogManager::open`] finishes them.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use super::files::FileCache;
use super::partition::{PartitionLog, remove_dir};
use super::segment;
use super::{FlushPolicy, LogConfig, LogError};

const META_FILE: &str = "partition.json";

/// What a partition directory's `partition.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMeta {
    pub topic: String,
    pub topic_id: String,
    pub partition: i32,
}

/// Settings of a [`LogManager`].
#[derive(Debug, Clone)]
pub struct LogManagerOptions {
    /// Config of the logs found at start-up, until `set_config` or
    /// `get_or_create` gives them theirs.
    pub default_config: LogConfig,
    /// At most this many segment and index files are kept open at once,
    /// across all partitions (plus those in use by I/O in flight).
    pub max_open_files: usize,
}

impl Default for LogManagerOptions {
    fn default() -> Self {
        LogManagerOptions {
            default_config: LogConfig::default(),
            max_open_files: 1024,
        }
    }
}

/// The partition logs of one storage node. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LogManager {
    inner: Arc<ManagerInner>,
}

#[derive(Debug)]
struct ManagerInner {
    data_dir: PathBuf,
    files: FileCache,
    logs: RwLock<HashMap<(String, i32), Managed>>,
    /// Serializes creations and removals.
    admin: tokio::sync::Mutex<()>,
}

#[derive(Debug, Clone)]
struct Managed {
    topic_id: String,
    log: PartitionLog,
}

/// Kafka's legal topic names: `[a-zA-Z0-9._-]`, 1 to 249 characters, not
/// `.` or `..` (so a name is always a safe directory name).
fn check_topic(topic: &str) -> Result<(), LogError> {
    let legal = !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if legal {
        Ok(())
    } else {
        Err(LogError::InvalidTopic(topic.to_string()))
    }
}

fn read_meta(dir: &Path) -> Option<PartitionMeta> {
    let bytes = fs::read(dir.join(META_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

impl LogManager {
    /// Opens every partition log under `data_dir` (created if missing),
    /// recovering each. Blocking: call it at start-up or through
    /// `spawn_blocking`.
    pub fn open(data_dir: &Path) -> Result<Self, LogError> {
        Self::open_with(data_dir, LogManagerOptions::default())
    }

    pub fn open_with(data_dir: &Path, options: LogManagerOptions) -> Result<Self, LogError> {
        fs::create_dir_all(data_dir).map_err(LogError::io_path("create", data_dir))?;
        let files = FileCache::new(options.max_open_files);
        let mut logs = HashMap::new();
        for entry in fs::read_dir(data_dir).map_err(LogError::io_path("list", data_dir))? {
            let entry = entry.map_err(LogError::io_path("list", data_dir))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if !path.is_dir() {
                continue;
            }
            if name.ends_with("-delete") {
                tracing::info!(dir = %path.display(), "finishing an interrupted log deletion");
                fs::remove_dir_all(&path).map_err(LogError::io_path("delete", &path))?;
                continue;
            }
            let Some(meta) = read_meta(&path) else {
                tracing::warn!(dir = %path.display(), "skipping a directory without a valid {META_FILE}");
                continue;
            };
            if name != format!("{}-{}", meta.topic, meta.partition) {
                tracing::warn!(dir = %path.display(), ?meta, "skipping a partition directory whose name does not match its {META_FILE}");
                continue;
            }
            let log = PartitionLog::open_with(
                &path,
                options.default_config.clone(),
                files.clone(),
                &meta.topic,
                &meta.partition.to_string(),
            )?;
            logs.insert(
                (meta.topic, meta.partition),
                Managed {
                    topic_id: meta.topic_id,
                    log,
                },
            );
        }
        tracing::info!(data_dir = %data_dir.display(), partitions = logs.len(), "opened partition logs");
        Ok(LogManager {
            inner: Arc::new(ManagerInner {
                data_dir: data_dir.to_path_buf(),
                files,
                logs: RwLock::new(logs),
                admin: tokio::sync::Mutex::new(()),
            }),
        })
    }

    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    /// The cache that bounds the open files of all these logs.
    pub fn file_cache(&self) -> &FileCache {
        &self.inner.files
    }

    /// The log of a partition, if this node has it.
    pub fn get(&self, topic: &str, partition: i32) -> Option<PartitionLog> {
        self.lookup(topic, partition).map(|m| m.log)
    }

    fn lookup(&self, topic: &str, partition: i32) -> Option<Managed> {
        self.inner
            .logs
            .read()
            .get(&(topic.to_string(), partition))
            .cloned()
    }

    /// The log of a partition, created if missing. `config` becomes the
    /// log's config either way. If the partition exists with another topic
    /// id (the topic was deleted and created again), the old data is
    /// deleted and the log starts afresh.
    pub async fn get_or_create(
        &self,
        topic: &str,
        topic_id: &str,
        partition: i32,
        config: LogConfig,
    ) -> Result<PartitionLog, LogError> {
        check_topic(topic)?;
        if partition < 0 {
            return Err(LogError::InvalidPartition(partition));
        }
        if let Some(m) = self.lookup(topic, partition)
            && m.topic_id == topic_id
        {
            m.log.set_config(config);
            return Ok(m.log);
        }
        let _admin = self.inner.admin.lock().await;
        if let Some(m) = self.lookup(topic, partition) {
            if m.topic_id == topic_id {
                m.log.set_config(config);
                return Ok(m.log);
            }
            tracing::info!(topic, partition, old_topic_id = %m.topic_id, topic_id,
                "topic was recreated: deleting the old partition data");
            self.inner
                .logs
                .write()
                .remove(&(topic.to_string(), partition));
            m.log.remove().await?;
        }
        let inner = self.inner.clone();
        let meta = PartitionMeta {
            topic: topic.to_string(),
            topic_id: topic_id.to_string(),
            partition,
        };
        let log = tokio::task::spawn_blocking(move || inner.create(meta, config))
            .await
            .map_err(LogError::join)??;
        Ok(log)
    }

    /// Deletes a partition's log and data. `false` if there was none.
    pub async fn remove(&self, topic: &str, partition: i32) -> Result<bool, LogError> {
        let _admin = self.inner.admin.lock().await;
        let removed = self
            .inner
            .logs
            .write()
            .remove(&(topic.to_string(), partition));
        match removed {
            Some(m) => {
                m.log.remove().await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Every partition as `(topic, topic_id, partition)`, sorted.
    pub fn list(&self) -> Vec<(String, String, i32)> {
        let mut all: Vec<_> = self
            .inner
            .logs
            .read()
            .iter()
            .map(|((topic, partition), m)| (topic.clone(), m.topic_id.clone(), *partition))
            .collect();
        all.sort();
        all
    }

    /// Replaces a partition's config; `false` if this node lacks it.
    pub fn set_config(&self, topic: &str, partition: i32, config: LogConfig) -> bool {
        match self.get(topic, partition) {
            Some(log) => {
                log.set_config(config);
                true
            }
            None => false,
        }
    }
}

impl ManagerInner {
    /// Creates (or adopts) a partition directory and opens its log.
    fn create(&self, meta: PartitionMeta, config: LogConfig) -> Result<PartitionLog, LogError> {
        let dir = self
            .data_dir
            .join(format!("{}-{}", meta.topic, meta.partition));
        let durable = config.flush != FlushPolicy::Os;
        match read_meta(&dir) {
            Some(old) if old.topic_id != meta.topic_id => {
                tracing::info!(dir = %dir.display(), old_topic_id = %old.topic_id, topic_id = %meta.topic_id,
                    "deleting partition data of an older topic with the same name");
                self.files.evict_dir(&dir);
                remove_dir(&dir)?;
            }
            _ => {}
        }
        let meta_path = dir.join(META_FILE);
        if read_meta(&dir).as_ref() != Some(&meta) {
            fs::create_dir_all(&dir).map_err(LogError::io_path("create", &dir))?;
            let json = serde_json::to_vec_pretty(&meta)
                .map_err(|e| LogError::Internal(format!("encode {META_FILE}: {e}")))?;
            if durable {
                segment::write_file_durably(&meta_path, &json)
                    .map_err(LogError::io_path("write", &meta_path))?;
                for d in [&dir, &self.data_dir] {
                    segment::sync_dir(d).map_err(LogError::io_path("fsync", d))?;
                }
            } else {
                fs::write(&meta_path, &json).map_err(LogError::io_path("write", &meta_path))?;
            }
        }
        let log = PartitionLog::open_with(
            &dir,
            config,
            self.files.clone(),
            &meta.topic,
            &meta.partition.to_string(),
        )?;
        self.logs.write().insert(
            (meta.topic, meta.partition),
            Managed {
                topic_id: meta.topic_id,
                log: log.clone(),
            },
        );
        Ok(log)
    }
}
