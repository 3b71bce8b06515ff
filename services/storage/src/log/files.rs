//! A bounded LRU cache of open files, shared by many partition logs so that
//! thousands of partitions do not mean thousands of open descriptors.
//!
//! All log I/O is positional (`read_at`/`write_all_at`) and fsync works on any
//! descriptor of a file, so a handle can be evicted and reopened at any time.
//! A handle still in use when it is evicted stays open until its user drops
//! it, so the number of open files is the capacity plus the I/O in flight.
//!
//! Once [`FileCache::evict`] (or [`FileCache::evict_dir`]) returns, the cache
//! never hands out a handle of that path opened before the call: an open
//! that raced with the eviction returns its handle to its caller but does
//! not cache it. So a deleted (or replaced) file is not kept open, nor served
//! to later readers, by the cache.

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
    /// Bumped by every explicit eviction or replacement; a handle opened
    /// while it changed may be stale and is not cached.
    evictions: u64,
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
                evictions: 0,
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
        let evictions = match self.cached(path) {
            Ok(file) => return Ok(file),
            Err(evictions) => evictions,
        };
        // Open outside the lock; if another thread won the race, use its
        // handle and drop ours.
        let file = Arc::new(OpenOptions::new().read(true).write(writable).open(path)?);
        Ok(self.insert_opened(path, file, evictions))
    }

    /// The cached handle of `path`, or (on a miss) the eviction count to
    /// hand to [`Self::insert_opened`] with a handle opened after this call.
    fn cached(&self, path: &Path) -> Result<Arc<File>, u64> {
        let mut state = self.inner.lock();
        state.touch(path).ok_or(state.evictions)
    }

    /// Caches a handle opened after [`Self::cached`] returned `evictions`,
    /// unless an eviction happened since (the path may have been deleted or
    /// replaced while it was opened: the caller may use the handle, the cache
    /// does not keep it). Returns the handle to use.
    fn insert_opened(&self, path: &Path, file: Arc<File>, evictions: u64) -> Arc<File> {
        let mut state = self.inner.lock();
        if let Some(existing) = state.touch(path) {
            return existing;
        }
        if state.evictions == evictions {
            state.insert(path.to_path_buf(), file.clone());
        }
        file
    }

    /// Puts a freshly created file in the cache, replacing any stale handle.
    pub(crate) fn insert(&self, path: &Path, file: Arc<File>) {
        let mut state = self.inner.lock();
        state.evictions += 1;
        state.remove(path);
        state.insert(path.to_path_buf(), file);
    }

    /// Drops the handle of one file (after it was replaced or deleted).
    pub(crate) fn evict(&self, path: &Path) {
        let mut state = self.inner.lock();
        state.evictions += 1;
        state.remove(path);
    }

    /// Whether the cache holds a handle of `path`.
    #[cfg(test)]
    pub(crate) fn contains(&self, path: &Path) -> bool {
        self.inner.lock().files.contains_key(path)
    }

    /// Drops the handles of every file under `dir`.
    pub(crate) fn evict_dir(&self, dir: &Path) {
        let mut state = self.inner.lock();
        state.evictions += 1;
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

    /// A handle opened while its path was evicted (deleted) is returned to
    /// the opener but never cached.
    #[test]
    fn an_open_racing_an_eviction_is_not_cached() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        std::fs::write(&path, b"old").unwrap();
        let cache = FileCache::new(8);
        let evictions = cache.cached(&path).unwrap_err();
        let file = Arc::new(File::open(&path).unwrap());
        // Meanwhile the file is deleted and its handle evicted.
        std::fs::remove_file(&path).unwrap();
        cache.evict(&path);
        let got = cache.insert_opened(&path, file, evictions);
        assert!(!cache.contains(&path));
        // The opener still reads the old data through its handle.
        let mut buf = [0u8; 3];
        std::os::unix::fs::FileExt::read_exact_at(&*got, &mut buf, 0).unwrap();
        assert_eq!(&buf, b"old");
        // Without a racing eviction the handle is cached.
        std::fs::write(&path, b"new").unwrap();
        cache.open(&path, false).unwrap();
        assert!(cache.contains(&path));
    }
}
