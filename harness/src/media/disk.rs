//! A scenario's extra disks, made on the host without mounts (as images
//! are: `mke2fs -d` fills the file system from a folder) and cached by what
//! they hold. A trial never writes to the cached disk: the guest gets a
//! throwaway overlay on it.

use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::host::process::{self, ProcessError};
use crate::media::cache::{Cache, CacheError, KeyHash};
use crate::project::DiskSpec;

/// The cache kind extra disks live under.
pub const KIND: &str = "disks";

/// Part of every key: bump it when how a disk is made changes.
const DISK_FORMAT: &str = "vmrepro-disk-1";

/// The disk file in a cache entry.
const DISK_FILE: &str = "disk.qcow2";

/// Why an extra disk could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// A command that makes the disk failed.
    #[error("making disk {disk}: {source}")]
    Command {
        /// The disk's name in the scenario.
        disk: String,
        /// The failing command.
        source: ProcessError,
    },
    /// The folder of files could not be read, or holds something a file
    /// system made here cannot take.
    #[error("making disk {disk}: {message}")]
    Files {
        /// The disk's name in the scenario.
        disk: String,
        /// What is wrong, naming the file.
        message: String,
    },
    /// The cache failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// What a disk's cache entry records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskMeta {
    /// The disk's size in bytes.
    pub size: u64,
    /// The file system on it, if any.
    pub filesystem: Option<String>,
    /// How many files and folders were copied onto it.
    pub entries: usize,
}

/// The cached, read-only disk for `spec`, made first if the cache has none.
/// `ext4_features` are the release's `mke2fs -O` switches, so that an old
/// guest kernel can mount what is made here.
pub(crate) fn disk(
    cache: &Cache,
    spec: &DiskSpec,
    ext4_features: &[String],
    label: &str,
) -> Result<PathBuf, DiskError> {
    let files_error = |message: String| DiskError::Files {
        disk: spec.name.clone(),
        message,
    };
    let features = features_for(spec, ext4_features);
    let mut key = KeyHash::new().part(DISK_FORMAT).part(spec.size.to_string());
    if let Some(fs) = &spec.filesystem {
        key = key
            .part(&fs.kind)
            .part(fs.label.as_deref().unwrap_or(""))
            .part(features.join(","));
        if let Some((_, folder)) = &fs.files {
            key = hash_tree(key, folder, Path::new("")).map_err(files_error)?;
        }
    }
    let key = format!("{}-{}", spec.name, key.finish());
    let events = cache.events().clone();
    let entry = cache.get_or_build(KIND, &key, label, |work| {
        events.note(label, &format!("making disk {}", spec.name));
        make(work, spec, &features, label, &events)
    })?;
    Ok(entry.dir.join(DISK_FILE))
}

/// The `-O` switches for this disk: the release's, for ext4 only (ext2 and
/// ext3 get none of the new features those switches turn off).
fn features_for(spec: &DiskSpec, ext4_features: &[String]) -> Vec<String> {
    match &spec.filesystem {
        Some(fs) if fs.kind == "ext4" => ext4_features.to_vec(),
        _ => Vec::new(),
    }
}

fn make(
    work: &Path,
    spec: &DiskSpec,
    features: &[String],
    label: &str,
    events: &crate::host::progress::Events,
) -> Result<DiskMeta, DiskError> {
    let failed = |source| DiskError::Command {
        disk: spec.name.clone(),
        source,
    };
    let disk = work.join(DISK_FILE);
    let Some(fs) = &spec.filesystem else {
        let mut create = Command::new("qemu-img");
        create
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&disk)
            .arg(spec.size.to_string());
        process::run_logged(
            events,
            &format!("{label}: qemu-img create"),
            create,
            &work.join("qemu-img.log"),
            Duration::from_secs(60),
        )
        .map_err(failed)?;
        let _ = fs::remove_file(work.join("qemu-img.log"));
        return Ok(DiskMeta {
            size: spec.size,
            filesystem: None,
            entries: 0,
        });
    };
    let io = |path: &Path| {
        let path = path.to_owned();
        move |e: std::io::Error| DiskError::Files {
            disk: spec.name.clone(),
            message: format!("{}: {e}", path.display()),
        }
    };
    let raw = work.join("disk.raw");
    fs::File::create(&raw)
        .and_then(|file| file.set_len(spec.size))
        .map_err(io(&raw))?;
    let mut mke2fs = Command::new("mke2fs");
    mke2fs
        .args(["-q", "-F", "-t", &fs.kind])
        // Root owns the top folder, whoever runs this (mke2fs(8)).
        .args(["-E", "root_owner=0:0"]);
    if let Some(label) = &fs.label {
        mke2fs.arg("-L").arg(label);
    }
    if !features.is_empty() {
        mke2fs.arg("-O").arg(features.join(","));
    }
    let mut entries = Vec::new();
    if let Some((_, folder)) = &fs.files {
        list_tree(folder, Path::new(""), &mut entries).map_err(|message| DiskError::Files {
            disk: spec.name.clone(),
            message,
        })?;
        mke2fs.arg("-d").arg(folder);
    }
    mke2fs.arg(&raw);
    process::run_logged(
        events,
        &format!("{label}: mke2fs"),
        mke2fs,
        &work.join("mke2fs.log"),
        Duration::from_secs(600),
    )
    .map_err(failed)?;
    if !entries.is_empty() {
        // `mke2fs -d` keeps the owner the files have on the host; in the
        // guest they belong to root, as a `copy` step's do. debugfs sets
        // that without mounting (its `set_inode_field`, `sif`, covers both
        // halves of a 32-bit owner).
        let script = work.join("owners.debugfs");
        let mut commands = String::new();
        for entry in &entries {
            let path = format!("/{}", entry.display());
            for field in ["uid", "gid"] {
                commands.push_str(&format!("sif \"{path}\" {field} 0\n"));
            }
        }
        fs::write(&script, commands).map_err(io(&script))?;
        let mut debugfs = Command::new("debugfs");
        debugfs.arg("-w").arg("-f").arg(&script).arg(&raw);
        process::run_logged(
            events,
            &format!("{label}: debugfs"),
            debugfs,
            &work.join("debugfs.log"),
            Duration::from_secs(600),
        )
        .map_err(failed)?;
        // debugfs reports a bad command on its output and still exits 0.
        let log = fs::read_to_string(work.join("debugfs.log")).unwrap_or_default();
        if let Some(problem) = log
            .lines()
            .find(|l| l.contains("not found") || l.contains("Invalid") || l.contains("Couldn't"))
        {
            return Err(DiskError::Files {
                disk: spec.name.clone(),
                message: format!("setting owners: debugfs said {problem:?}"),
            });
        }
        let _ = fs::remove_file(&script);
    }
    super::qcow2_from_raw(events, label, &raw, &disk, work).map_err(failed)?;
    fs::remove_file(&raw).map_err(io(&raw))?;
    for log in ["mke2fs.log", "debugfs.log"] {
        let _ = fs::remove_file(work.join(log));
    }
    Ok(DiskMeta {
        size: spec.size,
        filesystem: Some(fs.kind.clone()),
        entries: entries.len(),
    })
}

/// Every path under `folder` (relative to it), in a stable order. Names
/// debugfs could not be told about are refused here, by name.
fn list_tree(folder: &Path, relative: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let here = folder.join(relative);
    let mut names: Vec<_> = fs::read_dir(&here)
        .map_err(|e| format!("{}: {e}", here.display()))?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", here.display()))?;
    names.sort();
    for name in names {
        let path = relative.join(&name);
        let text = name.to_string_lossy();
        if text.contains('"') || text.chars().any(char::is_control) || name.to_str().is_none() {
            return Err(format!(
                "{}: a file name with a double quote, a control character or invalid UTF-8 cannot go on a disk",
                folder.join(&path).display()
            ));
        }
        out.push(path.clone());
        let meta = fs::symlink_metadata(folder.join(&path))
            .map_err(|e| format!("{}: {e}", folder.join(&path).display()))?;
        if meta.is_dir() {
            list_tree(folder, &path, out)?;
        }
    }
    Ok(())
}

/// Adds what `mke2fs -d` copies from the tree (names, kinds, modes, file
/// contents and link targets) to a key.
fn hash_tree(mut key: KeyHash, folder: &Path, relative: &Path) -> Result<KeyHash, String> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut entries = Vec::new();
    list_tree(folder, relative, &mut entries)?;
    for path in entries {
        let full = folder.join(&path);
        let error = |e: std::io::Error| format!("{}: {e}", full.display());
        let meta = fs::symlink_metadata(&full).map_err(error)?;
        key = key
            .part(path.to_string_lossy().as_bytes())
            .part(format!("{:o}", meta.permissions().mode()));
        if meta.file_type().is_symlink() {
            key = key.part(
                fs::read_link(&full)
                    .map_err(error)?
                    .as_os_str()
                    .as_encoded_bytes(),
            );
        } else if meta.is_file() {
            let mut file = fs::File::open(&full).map_err(error)?;
            let mut buffer = vec![0u8; 1 << 16];
            loop {
                let read = file.read(&mut buffer).map_err(error)?;
                if read == 0 {
                    break;
                }
                key = key.part(&buffer[..read]);
            }
        }
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::project::DiskFilesystem;

    fn spec(dir: &Path) -> DiskSpec {
        DiskSpec {
            name: "data".into(),
            size: 8 << 20,
            filesystem: Some(DiskFilesystem {
                kind: "ext4".into(),
                label: Some("DATA".into()),
                files: Some(("files".into(), dir.to_owned())),
            }),
        }
    }

    #[test]
    fn the_key_follows_what_is_on_the_disk() {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::create_dir(dir.path().join("etc")).expect("mkdir");
        fs::write(dir.path().join("etc/a"), "one").expect("write");
        let key = |spec: &DiskSpec| {
            hash_tree(
                KeyHash::new(),
                &spec.filesystem.as_ref().unwrap().files.as_ref().unwrap().1,
                Path::new(""),
            )
            .expect("a readable tree")
            .finish()
        };
        let before = key(&spec(dir.path()));
        assert_eq!(before, key(&spec(dir.path())), "stable");
        fs::write(dir.path().join("etc/a"), "two").expect("write");
        let content = key(&spec(dir.path()));
        assert_ne!(before, content);
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(dir.path().join("etc/a"), fs::Permissions::from_mode(0o600))
            .expect("chmod");
        assert_ne!(content, key(&spec(dir.path())));
        fs::rename(dir.path().join("etc/a"), dir.path().join("etc/b")).expect("rename");
        let mut entries = Vec::new();
        list_tree(dir.path(), Path::new(""), &mut entries).expect("listed");
        assert_eq!(entries, vec![PathBuf::from("etc"), PathBuf::from("etc/b")]);
    }

    /// What debugfs says about `path` on the file system in `disk`.
    fn debugfs(disk: &Path, request: &str) -> String {
        let raw = disk.with_file_name("check.raw");
        let converted = Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(disk)
            .arg(&raw)
            .status()
            .expect("qemu-img runs");
        assert!(converted.success());
        let out = Command::new("debugfs")
            .arg("-R")
            .arg(request)
            .arg(&raw)
            .output()
            .expect("debugfs runs");
        let _ = fs::remove_file(&raw);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn a_disk_is_made_with_its_label_and_files_owned_by_root_and_cached() {
        use std::os::unix::fs::PermissionsExt as _;
        let project = tempfile::tempdir().expect("temp dir");
        let files = project.path().join("files");
        fs::create_dir_all(files.join("etc")).expect("mkdir");
        fs::write(files.join("etc/hello conf"), "hello\n").expect("write");
        fs::set_permissions(
            files.join("etc/hello conf"),
            fs::Permissions::from_mode(0o640),
        )
        .expect("chmod");
        let cache_dir = tempfile::tempdir().expect("temp dir");
        let cache = Cache::at(cache_dir.path());
        let disk_spec = spec(&files);
        let made = disk(&cache, &disk_spec, &[], "disk data").expect("made");
        let stat = debugfs(&made, "stat \"/etc/hello conf\"");
        assert!(stat.contains("User:     0   Group:     0"), "{stat}");
        assert!(stat.contains("Mode:  0640"), "{stat}");
        assert!(stat.contains("Size: 6"), "{stat}");
        let stats = debugfs(&made, "stats");
        assert!(stats.contains("Filesystem volume name:   DATA"), "{stats}");
        // 8 MiB in mke2fs's 1 KiB blocks for a file system this small.
        assert!(stats.contains("Block count:              8192"), "{stats}");
        // The same disk again is the cached one; other files, another disk.
        assert_eq!(
            disk(&cache, &disk_spec, &[], "disk data").expect("cached"),
            made
        );
        fs::write(files.join("etc/hello conf"), "bye\n").expect("write");
        assert_ne!(
            disk(&cache, &disk_spec, &[], "disk data").expect("made"),
            made
        );
    }

    #[test]
    fn names_debugfs_cannot_take_are_refused_by_name() {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::write(dir.path().join("say \"hi\""), "x").expect("write");
        let mut entries = Vec::new();
        let err = list_tree(dir.path(), Path::new(""), &mut entries).expect_err("refused");
        assert!(
            err.contains("say \"hi\"") && err.contains("double quote"),
            "{err}"
        );
    }

    #[test]
    fn only_ext4_gets_the_releases_feature_switches() {
        let dir = tempfile::tempdir().expect("temp dir");
        let features = vec!["^orphan_file".to_owned()];
        let mut disk = spec(dir.path());
        assert_eq!(features_for(&disk, &features), features);
        if let Some(fs) = disk.filesystem.as_mut() {
            fs.kind = "ext3".into();
        }
        assert!(features_for(&disk, &features).is_empty());
        disk.filesystem = None;
        assert!(features_for(&disk, &features).is_empty());
    }
}
