//! The on-disk cache of built artifacts (images, kernels): content-addressed
//! entries, built in a temporary directory and published with one rename
//! under a lock.
//!
//! An entry is complete when its `entry.json` exists and every file it lists
//! has the recorded size; `entry.json` is written last. So a build killed at
//! any point leaves either nothing or a `.build-*` directory that the next
//! build of the same key removes, and two processes that need the same entry
//! build it once: the second waits on the lock and then finds it.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::host::process::Supervisor;
use crate::host::progress::Events;

/// The cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
    /// Where builds report their progress.
    events: Events,
    /// Whether builds may install the host packages they need (as root,
    /// with apt-get) rather than say which to install.
    install: bool,
}

/// Why the cache failed.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// File system trouble.
    #[error("cache {path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// A complete entry.
#[derive(Debug, Clone)]
pub(crate) struct Entry<M> {
    /// The entry's directory.
    pub(crate) dir: PathBuf,
    /// What the build recorded about itself.
    pub(crate) meta: M,
}

/// A listing row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntryInfo {
    /// `images` or `kernels`.
    pub kind: String,
    /// The directory name: `NAME-HASH`.
    pub name: String,
    /// Total size of the entry's files.
    pub bytes: u64,
    /// Whether the entry is complete.
    pub complete: bool,
}

#[derive(Serialize, Deserialize)]
struct EntryFile<M> {
    files: BTreeMap<String, u64>,
    meta: M,
}

const ENTRY_FILE: &str = "entry.json";

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_owned(),
        source,
    }
}

impl Cache {
    /// The same cache, with builds reporting their progress to `events`.
    pub fn with_events(mut self, events: Events) -> Cache {
        self.events = events;
        self
    }

    /// The same cache, its builds allowed to install host packages or not.
    pub fn allowing_install(mut self, install: bool) -> Cache {
        self.install = install;
        self
    }

    /// Where the work done for this cache reports its progress.
    pub(crate) fn events(&self) -> &Events {
        &self.events
    }

    /// Whether the work done for this cache may install host packages.
    pub(crate) fn may_install(&self) -> bool {
        self.install
    }

    /// The cache at `root` (the settings' own, or a test's or a
    /// benchmark's for builds that must really happen), silent, its builds
    /// allowed to install host packages.
    pub fn at(root: impl Into<PathBuf>) -> Cache {
        Cache {
            root: root.into(),
            events: Events::silent(),
            install: true,
        }
    }

    /// The cache's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The complete entry `kind/key`, if there is one.
    pub(crate) fn lookup<M: DeserializeOwned>(&self, kind: &str, key: &str) -> Option<Entry<M>> {
        read_entry(&self.root.join(kind).join(key)).ok()
    }

    /// The entry `kind/key`, built by `build` if the cache has no complete
    /// one. `build` fills the directory it is given and returns the metadata
    /// to record; every regular file it leaves there becomes part of the
    /// entry and is made read-only.
    pub(crate) fn get_or_build<M, E>(
        &self,
        kind: &str,
        key: &str,
        label: &str,
        build: impl FnOnce(&Path) -> Result<M, E>,
    ) -> Result<Entry<M>, E>
    where
        M: Serialize + DeserializeOwned,
        E: From<CacheError>,
    {
        if let Some(entry) = self.lookup(kind, key) {
            return Ok(entry);
        }
        let parent = self.root.join(kind);
        fs::create_dir_all(&parent).map_err(io_error(&parent))?;
        let lock_path = parent.join(format!("{key}.lock"));
        let lock = File::create(&lock_path).map_err(io_error(&lock_path))?;
        if lock.try_lock().is_err() {
            self.events
                .note(label, "another vmrepro is building this; waiting for it");
            lock.lock().map_err(io_error(&lock_path))?;
        }
        // Under the lock: another process may have finished the entry, and
        // any build directory for this key is a leftover of a killed build.
        let dir = parent.join(key);
        match read_entry::<M>(&dir) {
            Ok(entry) => return Ok(entry),
            Err(why) if dir.exists() => {
                self.events.note(
                    label,
                    &format!(
                        "cache entry {} is incomplete or corrupt ({why}); rebuilding",
                        dir.display()
                    ),
                );
                fs::remove_dir_all(&dir).map_err(io_error(&dir))?;
            }
            Err(_) => {}
        }
        let prefix = format!(".build-{key}-");
        if let Ok(entries) = fs::read_dir(&parent) {
            for stale in entries.flatten() {
                if stale.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = fs::remove_dir_all(stale.path());
                }
            }
        }

        let work = tempfile::Builder::new()
            .prefix(&prefix)
            .tempdir_in(&parent)
            .map_err(io_error(&parent))?;
        let _registration = Supervisor::global().register(None, Some(work.path().to_owned()));
        let meta = match build(work.path()) {
            Ok(meta) => meta,
            Err(e) => {
                let logs = self.failed_logs_dir(kind, key);
                keep_logs(work.path(), &logs);
                self.events.note(
                    label,
                    &format!("build failed; its logs are kept in {}", logs.display()),
                );
                return Err(e);
            }
        };
        publish(work, &dir, meta)?;
        drop(lock);
        let entry = read_entry(&dir).map_err(|why| CacheError::Io {
            path: dir.clone(),
            source: std::io::Error::other(why),
        })?;
        Ok(entry)
    }

    /// Where the logs of the last failed build of an entry are kept: the
    /// build directory itself goes, half-written as it is, but its logs are
    /// what a failed CI job must upload.
    pub(crate) fn failed_logs_dir(&self, kind: &str, key: &str) -> PathBuf {
        self.root
            .join(".failed-builds")
            .join(format!("{kind}-{key}"))
    }

    /// Every entry of every kind.
    pub fn list(&self) -> Vec<EntryInfo> {
        let mut rows = Vec::new();
        let Ok(kinds) = fs::read_dir(&self.root) else {
            return rows;
        };
        // Hidden folders (kept logs of failed builds) hold no entries.
        for kind in kinds
            .flatten()
            .filter(|k| k.path().is_dir() && !k.file_name().to_string_lossy().starts_with('.'))
        {
            let Ok(entries) = fs::read_dir(kind.path()) else {
                continue;
            };
            for entry in entries.flatten().filter(|e| e.path().is_dir()) {
                let name = entry.file_name().to_string_lossy().into_owned();
                rows.push(EntryInfo {
                    kind: kind.file_name().to_string_lossy().into_owned(),
                    complete: !name.starts_with('.')
                        && read_entry::<serde_json::Value>(&entry.path()).is_ok(),
                    bytes: dir_size(&entry.path()),
                    name,
                });
            }
        }
        rows.sort_by(|a, b| (&a.kind, &a.name).cmp(&(&b.kind, &b.name)));
        rows
    }

    /// Removes entries whose kind/name passes `select`; returns what was removed.
    pub fn remove(
        &self,
        select: impl Fn(&EntryInfo) -> bool,
    ) -> Result<Vec<EntryInfo>, CacheError> {
        let mut removed = Vec::new();
        for row in self.list() {
            if select(&row) {
                let path = self.root.join(&row.kind).join(&row.name);
                make_writable(&path);
                fs::remove_dir_all(&path).map_err(io_error(&path))?;
                let _ =
                    fs::remove_file(self.root.join(&row.kind).join(format!("{}.lock", row.name)));
                removed.push(row);
            }
        }
        Ok(removed)
    }
}

fn publish<M: Serialize>(work: tempfile::TempDir, dir: &Path, meta: M) -> Result<(), CacheError> {
    use std::os::unix::fs::PermissionsExt;
    let mut files = BTreeMap::new();
    for file in fs::read_dir(work.path())
        .map_err(io_error(work.path()))?
        .flatten()
    {
        let path = file.path();
        let metadata = fs::symlink_metadata(&path).map_err(io_error(&path))?;
        if metadata.is_file() {
            files.insert(
                file.file_name().to_string_lossy().into_owned(),
                metadata.len(),
            );
            // Entries are never written after publication; make that hold on disk.
            fs::set_permissions(&path, fs::Permissions::from_mode(0o444))
                .map_err(io_error(&path))?;
        }
    }
    let entry_path = work.path().join(ENTRY_FILE);
    let text =
        serde_json::to_string_pretty(&EntryFile { files, meta }).map_err(|e| CacheError::Io {
            path: entry_path.clone(),
            source: std::io::Error::other(e),
        })?;
    let mut file = File::create(&entry_path).map_err(io_error(&entry_path))?;
    file.write_all(text.as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(io_error(&entry_path))?;
    let work = work.keep();
    fs::rename(&work, dir).map_err(io_error(dir))
}

fn read_entry<M: DeserializeOwned>(dir: &Path) -> Result<Entry<M>, String> {
    let text =
        fs::read_to_string(dir.join(ENTRY_FILE)).map_err(|e| format!("{ENTRY_FILE}: {e}"))?;
    let entry: EntryFile<M> =
        serde_json::from_str(&text).map_err(|e| format!("{ENTRY_FILE}: {e}"))?;
    for (name, size) in &entry.files {
        let actual = fs::metadata(dir.join(name))
            .map_err(|e| format!("{name}: {e}"))?
            .len();
        if actual != *size {
            return Err(format!("{name}: {actual} bytes, {ENTRY_FILE} says {size}"));
        }
    }
    Ok(Entry {
        dir: dir.to_owned(),
        meta: entry.meta,
    })
}

fn dir_size(path: &Path) -> u64 {
    fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn make_writable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(entries) = fs::read_dir(path) {
        for entry in entries.flatten() {
            let _ = fs::set_permissions(entry.path(), fs::Permissions::from_mode(0o644));
        }
    }
}

/// The content hash that names a cache entry: SHA-256 over parts that
/// are each followed by a NUL (so that no two lists of parts run together),
/// shown as its first 16 hexadecimal digits.
pub(crate) struct KeyHash(sha2::Sha256);

impl KeyHash {
    pub(crate) fn new() -> KeyHash {
        use sha2::Digest as _;
        KeyHash(sha2::Sha256::new())
    }

    /// Adds a part, and the NUL after it.
    pub(crate) fn part(mut self, part: impl AsRef<[u8]>) -> KeyHash {
        use sha2::Digest as _;
        self.0.update(part.as_ref());
        self.0.update([0]);
        self
    }

    /// The hash, with a last part that has no NUL after it (the form image
    /// keys have always had).
    pub(crate) fn last(mut self, part: impl AsRef<[u8]>) -> String {
        use sha2::Digest as _;
        self.0.update(part.as_ref());
        self.finish()
    }

    /// The hash.
    pub(crate) fn finish(self) -> String {
        use sha2::Digest as _;
        crate::text::hex(&self.0.finalize()[..8])
    }
}

/// Copies the `*.log` files of a failed build directory to `to`, replacing
/// what an earlier failure left there.
fn keep_logs(work: &Path, to: &Path) {
    let _ = fs::remove_dir_all(to);
    let Ok(entries) = fs::read_dir(work) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "log") && fs::create_dir_all(to).is_ok() {
            let _ = fs::copy(&path, to.join(entry.file_name()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[derive(Debug)]
    struct Failed;
    impl From<CacheError> for Failed {
        fn from(_: CacheError) -> Self {
            Failed
        }
    }

    #[test]
    fn an_entry_is_built_once_and_then_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = Cache::at(dir.path());
        let builds = AtomicUsize::new(0);
        for _ in 0..2 {
            let entry: Entry<String> = cache
                .get_or_build("things", "a-1", "test", |work| {
                    builds.fetch_add(1, Ordering::SeqCst);
                    fs::write(work.join("file"), b"content").map_err(|_| Failed)?;
                    Ok::<_, Failed>("meta".to_owned())
                })
                .expect("build");
            assert_eq!(entry.meta, "meta");
            assert_eq!(fs::read(entry.dir.join("file")).expect("read"), b"content");
        }
        assert_eq!(builds.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn concurrent_builders_build_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let builds = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let cache = Cache::at(dir.path());
                let builds = builds.clone();
                std::thread::spawn(move || {
                    let entry: Entry<u32> = cache
                        .get_or_build("things", "b-2", "test", |work| {
                            builds.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(200));
                            fs::write(work.join("file"), b"x").map_err(|_| Failed)?;
                            Ok::<_, Failed>(7)
                        })
                        .expect("build");
                    entry.meta
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().expect("thread"), 7);
        }
        assert_eq!(builds.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_failed_build_leaves_no_entry_and_a_corrupt_one_is_rebuilt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = Cache::at(dir.path());
        let failed = cache.get_or_build::<u32, Failed>("things", "c-3", "test", |work| {
            fs::write(work.join("half"), b"x").map_err(|_| Failed)?;
            Err(Failed)
        });
        assert!(failed.is_err());
        assert!(cache.lookup::<u32>("things", "c-3").is_none());
        let failed_log = cache.get_or_build::<u32, Failed>("things", "c-4", "test", |work| {
            fs::write(work.join("build.log"), b"what went wrong").map_err(|_| Failed)?;
            Err(Failed)
        });
        assert!(failed_log.is_err());
        assert_eq!(
            fs::read_to_string(cache.failed_logs_dir("things", "c-4").join("build.log"))
                .expect("the failed build's log is kept"),
            "what went wrong"
        );
        assert!(cache
            .list()
            .iter()
            .all(|r| r.complete || r.name.starts_with('.')));

        let entry: Entry<u32> = cache
            .get_or_build("things", "c-3", "test", |work| {
                fs::write(work.join("file"), b"12345").map_err(|_| Failed)?;
                Ok::<_, Failed>(1)
            })
            .expect("build");
        // Truncate a file behind the cache's back: the entry is no longer complete.
        let file = entry.dir.join("file");
        make_writable(&entry.dir);
        fs::write(&file, b"12").expect("write");
        assert!(cache.lookup::<u32>("things", "c-3").is_none());
        let rebuilt: Entry<u32> = cache
            .get_or_build("things", "c-3", "test", |work| {
                fs::write(work.join("file"), b"12345").map_err(|_| Failed)?;
                Ok::<_, Failed>(2)
            })
            .expect("rebuild");
        assert_eq!(rebuilt.meta, 2);
        // Leftover build directories of that key are gone.
        let leftovers = fs::read_dir(dir.path().join("things"))
            .expect("list")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".build-"))
            .count();
        assert_eq!(leftovers, 0);
    }
}
