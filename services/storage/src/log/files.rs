//! A bounded LRU cache of open files, shared by many partition logs so that
//! thousands of partitions do not mean thousands of open descriptors.
//!
//! All log I/O is positional (`read_at`/`write_all_at`) and fsync works on any
//! descriptor of a file, so a handle can be evicted and reopened at any time.
//! A handle still in use when it is evicted stays open until its user drops
//! it, so the number of open files is the capacity plus the I/O in flight.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

/// Capacity of [`FileCache::global`], used by logs opened on their own.
const GLOBAL_CAPACITY: usize = 256;

/// A shared, bounded cache of open files (cheap to clone).
#[derive(Clone, Debug)]
pub struct FileCache {
    inner: Arc<Mutex<CacheState>>,
}

#[derive(Debug)]
struct CacheState {
    capacity: usize,
    tick: u64,
    files: HashMap<PathBuf, (Arc<File>, u64)>,
    by_age: BTreeMap<u64, PathBuf>,
}

impl FileCache {
    /// A cache that keeps at most `capacity` files open (at least 1).
    pub fn new(capacity: usize) -> Self {
        FileCache {
            inner: Arc::new(Mutex::new(CacheState {
                capacity: capacity.max(1),
                tick: 0,
                files: HashMap::new(),
                by_age: BTreeMap::new(),
            })),
        }
    }

    /// The process-wide cache used by [`PartitionLog::open`](super::PartitionLog::open).
    pub fn global() -> &'static FileCache {
        static GLOBAL: OnceLock<FileCache> = OnceLock::new();
        GLOBAL.get_or_init(|| FileCache::new(GLOBAL_CAPACITY))
    }

    /// How many files the cache holds open.
    pub fn len(&self) -> usize {
        self.inner.lock().files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns an open handle of an existing file, opening it (read-write if
    /// `writable`, else read-only) on a miss. A path must always be opened
    /// with the same `writable`.
    pub(crate) fn open(&self, path: &Path, writable: bool) -> io::Result<Arc<File>> {
        if let Some(file) = self.inner.lock().touch(path) {
            return Ok(file);
        }
        // Open outside the lock; if another thread won the race, use its
        // handle and drop ours.
        let file = Arc::new(OpenOptions::new().read(true).write(writable).open(path)?);
        let mut state = self.inner.lock();
        if let Some(existing) = state.touch(path) {
            return Ok(existing);
        }
        state.insert(path.to_path_buf(), file.clone());
        Ok(file)
    }

    /// Puts a freshly created file in the cache, replacing any stale handle.
    pub(crate) fn insert(&self, path: &Path, file: Arc<File>) {
        let mut state = self.inner.lock();
        state.remove(path);
        state.insert(path.to_path_buf(), file);
    }

    /// Drops the handle of one file (after it was replaced or deleted).
    pub(crate) fn evict(&self, path: &Path) {
        self.inner.lock().remove(path);
    }

    /// Drops the handles of every file under `dir`.
    pub(crate) fn evict_dir(&self, dir: &Path) {
        let mut state = self.inner.lock();
        let paths: Vec<PathBuf> = state
            .files
            .keys()
            .filter(|p| p.starts_with(dir))
            .cloned()
            .collect();
        for path in paths {
            state.remove(&path);
        }
    }
}

impl CacheState {
    fn touch(&mut self, path: &Path) -> Option<Arc<File>> {
        self.tick += 1;
        let tick = self.tick;
        let (file, age) = self.files.get_mut(path)?;
        self.by_age.remove(age);
        *age = tick;
        self.by_age.insert(tick, path.to_path_buf());
        Some(file.clone())
    }

    fn insert(&mut self, path: PathBuf, file: Arc<File>) {
        while self.files.len() >= self.capacity {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            self.files.remove(&oldest);
        }
        self.tick += 1;
        self.by_age.insert(self.tick, path.clone());
        self.files.insert(path, (file, self.tick));
    }

    fn remove(&mut self, path: &Path) {
        if let Some((_, age)) = self.files.remove(path) {
            self.by_age.remove(&age);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn evicts_the_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = (0..4).map(|i| dir.path().join(format!("{i}"))).collect();
        for p in &paths {
            std::fs::write(p, b"x").unwrap();
        }
        let cache = FileCache::new(2);
        cache.open(&paths[0], false).unwrap();
        cache.open(&paths[1], false).unwrap();
        cache.open(&paths[0], false).unwrap(); // 0 is now the most recent
        cache.open(&paths[2], false).unwrap(); // evicts 1
        assert_eq!(cache.len(), 2);
        let state = cache.inner.lock();
        assert!(state.files.contains_key(&paths[0]));
        assert!(state.files.contains_key(&paths[2]));
        assert_eq!(state.by_age.len(), 2);
        drop(state);
        cache.evict_dir(dir.path());
        assert!(cache.is_empty());
    }
}
