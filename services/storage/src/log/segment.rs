//! Segment files: names, the two index formats, reading batch headers, and
//! the scan that recovery and index rebuilds share.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use runnel_records::batch::{self, BatchHeader, HEADER_LEN};

pub(crate) const LOG_EXT: &str = "log";
pub(crate) const INDEX_EXT: &str = "index";
pub(crate) const TIME_INDEX_EXT: &str = "timeindex";
const INDEX_ENTRY_LEN: u64 = 8;
const TIME_ENTRY_LEN: u64 = 12;

/// "No timestamp yet" for a segment's max timestamp (below Kafka's -1).
pub(crate) const NO_TIMESTAMP: i64 = i64::MIN;

/// Largest segment: index positions are `u32`.
pub(crate) const MAX_SEGMENT_BYTES: u64 = u32::MAX as u64;

pub(crate) fn segment_path(dir: &Path, base_offset: i64, ext: &str) -> PathBuf {
    dir.join(format!("{base_offset:020}.{ext}"))
}

/// Splits `00000000000000004711.log` into `(4711, "log")`.
pub(crate) fn parse_segment_name(name: &str) -> Option<(i64, &str)> {
    let (stem, ext) = name.split_once('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((stem.parse().ok()?, ext))
}

/// fsyncs a directory, making created, renamed and deleted names durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes a whole file so that a crash leaves either the old file or the
/// complete new one: temporary file, fsync, rename.
pub(crate) fn write_file_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_data()?;
    fs::rename(&tmp, path)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub rel_offset: u32,
    pub position: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeEntry {
    pub timestamp: i64,
    pub rel_offset: u32,
}

/// The indexes of one segment, built batch by batch as it is written (or
/// scanned), plus the segment's max timestamp.
#[derive(Debug, Clone)]
pub(crate) struct IndexBuilder {
    pub index: Vec<IndexEntry>,
    pub time_index: Vec<TimeEntry>,
    bytes_since_entry: u64,
    /// Largest batch max timestamp so far, [`NO_TIMESTAMP`] if none.
    pub max_timestamp: i64,
    /// Base offset of the first batch that reached `max_timestamp`.
    pub max_timestamp_offset: i64,
}

impl IndexBuilder {
    pub fn new() -> Self {
        IndexBuilder {
            index: Vec::new(),
            time_index: Vec::new(),
            bytes_since_entry: 0,
            max_timestamp: NO_TIMESTAMP,
            max_timestamp_offset: -1,
        }
    }

    /// Accounts for one batch of `len` bytes written at `position` of the
    /// segment that starts at `segment_base`.
    pub fn add_batch(
        &mut self,
        segment_base: i64,
        base_offset: i64,
        position: u64,
        len: u64,
        max_timestamp: i64,
        interval: u32,
    ) {
        if max_timestamp > self.max_timestamp {
            self.max_timestamp = max_timestamp;
            self.max_timestamp_offset = base_offset;
        }
        if self.index.is_empty() || self.bytes_since_entry >= u64::from(interval) {
            self.index.push(IndexEntry {
                rel_offset: (base_offset - segment_base) as u32,
                position: position as u32,
            });
            self.push_time_entry(segment_base);
            self.bytes_since_entry = 0;
        }
        self.bytes_since_entry += len;
    }

    fn push_time_entry(&mut self, segment_base: i64) {
        let grew = self
            .time_index
            .last()
            .is_none_or(|e| self.max_timestamp > e.timestamp);
        if self.max_timestamp != NO_TIMESTAMP && grew {
            self.time_index.push(TimeEntry {
                timestamp: self.max_timestamp,
                rel_offset: (self.max_timestamp_offset - segment_base) as u32,
            });
        }
    }

    /// The time index as it is written when the segment is sealed: its last
    /// entry holds the segment's max timestamp.
    pub fn sealed_time_index(&self, segment_base: i64) -> Vec<TimeEntry> {
        let mut sealed = self.clone();
        sealed.push_time_entry(segment_base);
        sealed.time_index
    }

    /// File position of the last indexed batch at or before `rel_offset`.
    pub fn lookup(&self, rel_offset: u32) -> u32 {
        let i = self.index.partition_point(|e| e.rel_offset <= rel_offset);
        if i == 0 {
            0
        } else {
            self.index[i - 1].position
        }
    }

    /// Relative offset to start looking for a timestamp `>= ts` from: every
    /// record before it has a smaller timestamp.
    pub fn time_lookup(&self, ts: i64) -> Option<u32> {
        let i = self.time_index.partition_point(|e| e.timestamp < ts);
        (i > 0).then(|| self.time_index[i - 1].rel_offset)
    }
}

pub(crate) fn encode_index(entries: &[IndexEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * INDEX_ENTRY_LEN as usize);
    for e in entries {
        out.extend_from_slice(&e.rel_offset.to_be_bytes());
        out.extend_from_slice(&e.position.to_be_bytes());
    }
    out
}

pub(crate) fn encode_time_index(entries: &[TimeEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * TIME_ENTRY_LEN as usize);
    for e in entries {
        out.extend_from_slice(&e.timestamp.to_be_bytes());
        out.extend_from_slice(&e.rel_offset.to_be_bytes());
    }
    out
}

fn read_index_entry(file: &File, i: u64) -> io::Result<IndexEntry> {
    let mut b = [0u8; INDEX_ENTRY_LEN as usize];
    file.read_exact_at(&mut b, i * INDEX_ENTRY_LEN)?;
    let [r0, r1, r2, r3, p0, p1, p2, p3] = b;
    Ok(IndexEntry {
        rel_offset: u32::from_be_bytes([r0, r1, r2, r3]),
        position: u32::from_be_bytes([p0, p1, p2, p3]),
    })
}

fn read_time_entry(file: &File, i: u64) -> io::Result<TimeEntry> {
    let mut b = [0u8; TIME_ENTRY_LEN as usize];
    file.read_exact_at(&mut b, i * TIME_ENTRY_LEN)?;
    let [t0, t1, t2, t3, t4, t5, t6, t7, r0, r1, r2, r3] = b;
    Ok(TimeEntry {
        timestamp: i64::from_be_bytes([t0, t1, t2, t3, t4, t5, t6, t7]),
        rel_offset: u32::from_be_bytes([r0, r1, r2, r3]),
    })
}

/// [`IndexBuilder::lookup`] on an index file, by binary search with
/// positional reads (sealed segments' indexes are not kept in memory).
pub(crate) fn lookup_index_file(file: &File, rel_offset: u32) -> io::Result<u32> {
    let n = file.metadata()?.len() / INDEX_ENTRY_LEN;
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if read_index_entry(file, mid)?.rel_offset <= rel_offset {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(if lo == 0 {
        0
    } else {
        read_index_entry(file, lo - 1)?.position
    })
}

/// [`IndexBuilder::time_lookup`] on a time index file.
pub(crate) fn time_lookup_file(file: &File, ts: i64) -> io::Result<Option<u32>> {
    let n = file.metadata()?.len() / TIME_ENTRY_LEN;
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if read_time_entry(file, mid)?.timestamp < ts {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(if lo == 0 {
        None
    } else {
        Some(read_time_entry(file, lo - 1)?.rel_offset)
    })
}

/// Checks the index files of a sealed segment whose log is `log_size` bytes.
/// `Ok(Ok(last time entry))` if they look whole, `Ok(Err(reason))` if they
/// must be rebuilt.
pub(crate) fn check_sealed_indexes(
    dir: &Path,
    base: i64,
    log_size: u64,
) -> io::Result<Result<Option<TimeEntry>, String>> {
    let open = |ext: &str| match File::open(segment_path(dir, base, ext)) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    };
    let Some(index) = open(INDEX_EXT)? else {
        return Ok(Err("offset index is missing".into()));
    };
    let Some(time_index) = open(TIME_INDEX_EXT)? else {
        return Ok(Err("time index is missing".into()));
    };
    let index_len = index.metadata()?.len();
    let time_len = time_index.metadata()?.len();
    if index_len % INDEX_ENTRY_LEN != 0 || time_len % TIME_ENTRY_LEN != 0 {
        return Ok(Err(format!(
            "index sizes {index_len}/{time_len} are not whole entries"
        )));
    }
    if log_size == 0 {
        return Ok(Ok(None));
    }
    if index_len == 0 || time_len == 0 {
        return Ok(Err("index is empty but the log is not".into()));
    }
    let last = read_index_entry(&index, index_len / INDEX_ENTRY_LEN - 1)?;
    if u64::from(last.position) >= log_size {
        return Ok(Err(format!(
            "index points at position {} beyond the log's {log_size} bytes",
            last.position
        )));
    }
    Ok(Ok(Some(read_time_entry(
        &time_index,
        time_len / TIME_ENTRY_LEN - 1,
    )?)))
}

/// Buffered positional reads of a segment file up to `end`: `get` serves a
/// range from the buffer, or refills it with at least `chunk` bytes there.
pub(crate) struct ChunkReader<'a> {
    file: &'a File,
    end: u64,
    chunk: usize,
    buf: Vec<u8>,
    start: u64,
}

impl<'a> ChunkReader<'a> {
    pub fn new(file: &'a File, end: u64, chunk: usize) -> Self {
        ChunkReader {
            file,
            end,
            chunk,
            buf: Vec::new(),
            start: 0,
        }
    }

    /// The `len` bytes at `pos`, or `None` if they reach beyond `end`.
    pub fn get(&mut self, pos: u64, len: usize) -> io::Result<Option<&[u8]>> {
        if pos + len as u64 > self.end {
            return Ok(None);
        }
        let buffered = pos >= self.start && pos + len as u64 <= self.start + self.buf.len() as u64;
        if !buffered {
            let want = (len.max(self.chunk) as u64).min(self.end - pos) as usize;
            self.buf.resize(want, 0);
            self.file.read_exact_at(&mut self.buf, pos)?;
            self.start = pos;
        }
        let at = (pos - self.start) as usize;
        Ok(Some(&self.buf[at..at + len]))
    }

    /// The header of the batch at `pos`, `None` at the end.
    pub fn header(&mut self, pos: u64) -> io::Result<Option<Result<BatchHeader, String>>> {
        Ok(self
            .get(pos, HEADER_LEN)?
            .map(|b| BatchHeader::parse(b).map_err(|e| format!("at position {pos}: {e}"))))
    }
}

/// What a scan of a segment found.
#[derive(Debug)]
pub(crate) struct Scanned {
    /// Bytes of whole, valid batches from the start of the file.
    pub valid_len: u64,
    /// Offset after the last valid batch.
    pub end_offset: i64,
    pub indexes: IndexBuilder,
    /// Max timestamp of the first batch, if any.
    pub first_timestamp: Option<i64>,
    /// Why the scan stopped before the end of the file, if it did.
    pub stopped: Option<String>,
}

/// Scans a segment file batch by batch from the start: header, length within
/// the file, record count, CRC-32C and increasing offsets from `base`. Stops at the first batch that fails any check and reports why.
pub(crate) fn scan_segment(file: &File, base: i64, interval: u32) -> io::Result<Scanned> {
    let file_len = file.metadata()?.len();
    let mut reader = ChunkReader::new(file, file_len, 1 << 20);
    let mut pos = 0u64;
    let mut next = base;
    let mut indexes = IndexBuilder::new();
    let mut first_timestamp = None;
    let mut stopped = None;
    while pos < file_len {
        let header = match reader.header(pos)? {
            None => {
                stopped = Some(format!("torn batch header at position {pos}"));
                break;
            }
            Some(Err(e)) => {
                stopped = Some(e);
                break;
            }
            Some(Ok(h)) => h,
        };
        // Offsets only grow; a compacted segment has gaps between batches.
        if header.base_offset < next {
            stopped = Some(format!(
                "batch at position {pos} has base offset {}, expected at least {next}",
                header.base_offset
            ));
            break;
        }
        let len = header.total_len();
        if pos + len as u64 > MAX_SEGMENT_BYTES {
            stopped = Some(format!("batch at position {pos} ends beyond 4 GiB"));
            break;
        }
        let Some(bytes) = reader.get(pos, len)? else {
            stopped = Some(format!(
                "torn batch at position {pos}: {len} bytes, file ends at {file_len}"
            ));
            break;
        };
        if let Err(e) = batch::validate(bytes) {
            stopped = Some(format!("bad batch at position {pos}: {e}"));
            break;
        }
        first_timestamp.get_or_insert(header.max_timestamp);
        indexes.add_batch(
            base,
            header.base_offset,
            pos,
            len as u64,
            header.max_timestamp,
            interval,
        );
        pos += len as u64;
        next = header.next_offset();
    }
    Ok(Scanned {
        valid_len: pos,
        end_offset: next,
        indexes,
        first_timestamp,
        stopped,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn names_round_trip() {
        let p = segment_path(Path::new("/d"), 4711, LOG_EXT);
        assert_eq!(p, Path::new("/d/00000000000000004711.log"));
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(parse_segment_name(name), Some((4711, "log")));
        assert_eq!(parse_segment_name("4711.log"), None);
        assert_eq!(parse_segment_name("partition.json"), None);
    }

    #[test]
    fn index_lookups_in_memory_and_on_disk_agree() {
        let mut b = IndexBuilder::new();
        // 100 batches of 100 bytes, 10 offsets each, timestamps rising by 5
        // with a dip every 7th batch.
        for i in 0..100u64 {
            let ts = if i % 7 == 0 { 0 } else { 1000 + i as i64 * 5 };
            b.add_batch(1000, 1000 + i as i64 * 10, i * 100, 100, ts, 250);
        }
        assert_eq!(b.index.len(), 34);
        let dir = tempfile::tempdir().unwrap();
        let ipath = dir.path().join("i");
        let tpath = dir.path().join("t");
        fs::write(&ipath, encode_index(&b.index)).unwrap();
        fs::write(&tpath, encode_time_index(&b.sealed_time_index(1000))).unwrap();
        let (ifile, tfile) = (File::open(&ipath).unwrap(), File::open(&tpath).unwrap());
        for rel in 0..1100 {
            assert_eq!(lookup_index_file(&ifile, rel).unwrap(), b.lookup(rel));
            let pos = b.lookup(rel);
            assert!(u64::from(pos) <= u64::from(rel) / 10 * 100);
        }
        for ts in [-5, 0, 1, 1004, 1005, 1006, 1400, 1495, 1496, 5000] {
            let mem = b.time_lookup(ts);
            let disk = time_lookup_file(&tfile, ts).unwrap();
            if ts <= 1495 {
                assert_eq!(mem, disk, "{ts}");
            }
            // Every batch before the returned offset has smaller timestamps.
            if let Some(rel) = disk {
                for i in 0..u64::from(rel) / 10 {
                    let bts = if i % 7 == 0 { 0 } else { 1000 + i as i64 * 5 };
                    assert!(bts < ts);
                }
            }
        }
        let last = b.sealed_time_index(1000).last().copied().unwrap();
        assert_eq!(last.timestamp, 1000 + 99 * 5);
        assert_eq!(last.rel_offset, 990);
    }
}
