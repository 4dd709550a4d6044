//! Guest images: from a release recipe in `images/` to a cached, read-only
//! qcow2 disk with the release's stock kernel and initrd beside it.
//!
//! A build runs the bootstrap tool as a command into a directory, shapes the
//! tree into a guest the harness can drive (a root shell on the control serial
//! port, a root file system on the whole virtio disk), makes an ext4 file
//! system from the tree with `mke2fs -d` (no mounts, no loop devices) and
//! converts it to qcow2. Entries are keyed by a hash of the recipe, built in a
//! temporary directory and published with one rename under a lock, so a killed
//! build leaves nothing that looks like an entry and two processes that need
//! the same entry build it once.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::host;
use crate::process::{self, ProcessError, Supervisor};
use crate::progress;
use crate::scenario::KernelFlavour;

/// Bump when the build changes what ends up in an image, so that old cache
/// entries are not reused.
const IMAGE_FORMAT: &str = "vmrepro-image-3";

/// The serial port the guest's root shell listens on (the second one; the
/// first carries the kernel console).
pub const CONTROL_TTY: &str = "ttyS1";

/// A release recipe: how to bootstrap one Debian release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRecipe {
    /// Release code name, as scenario matrices name it.
    pub release: String,
    /// The archive suite to bootstrap.
    pub suite: String,
    /// The mirror this release must come from; `None` means the host's
    /// mirror (or the bootstrap tool's default).
    #[serde(default)]
    pub mirror: Option<String>,
    /// Packages installed on top of the minimal base.
    pub packages: Vec<String>,
    /// The release's stock kernel package.
    pub stock_kernel: String,
    /// debconf answers given before packages are configured, so nothing prompts.
    #[serde(default)]
    pub debconf: Vec<String>,
    /// Size of the root file system in MiB.
    #[serde(default = "default_disk_mib")]
    pub disk_mib: u64,
}

fn default_disk_mib() -> u64 {
    2048
}

/// Why an image could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A recipe file is unreadable or invalid.
    #[error("{path}: {message}")]
    Recipe {
        /// The recipe file.
        path: PathBuf,
        /// What is wrong (with line and key where known).
        message: String,
    },
    /// No recipe for the release.
    #[error("no image recipe for release {release:?} in {dir}")]
    UnknownRelease {
        /// The release asked for.
        release: String,
        /// Where recipes were looked for.
        dir: PathBuf,
    },
    /// The release's archive cannot be reached from here.
    #[error("release {release} cannot be fetched here: {reason}")]
    Unreachable {
        /// The release.
        release: String,
        /// What the probe found.
        reason: String,
    },
    /// A build command failed.
    #[error("building the {release} image: {source}")]
    Build {
        /// The release.
        release: String,
        /// The failing command.
        source: ProcessError,
    },
    /// The built tree is not what the harness needs.
    #[error("building the {release} image: {message}")]
    Tree {
        /// The release.
        release: String,
        /// What is wrong.
        message: String,
    },
    /// File system trouble in the cache.
    #[error("image cache {path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_owned(),
        source,
    }
}

impl ImageRecipe {
    /// Reads a recipe file.
    pub fn load(path: &Path) -> Result<ImageRecipe, ImageError> {
        let text = fs::read_to_string(path).map_err(|e| ImageError::Recipe {
            path: path.to_owned(),
            message: format!("cannot read: {e}"),
        })?;
        toml::from_str(&text).map_err(|e| {
            let offset = e.span().map(|s| s.start).unwrap_or(0).min(text.len());
            let line = text[..offset].matches('\n').count() + 1;
            ImageRecipe::recipe_error(path, format!("line {line}: {}", e.message().trim()))
        })
    }

    fn recipe_error(path: &Path, message: String) -> ImageError {
        ImageError::Recipe {
            path: path.to_owned(),
            message,
        }
    }

    /// The content hash that names this recipe's cache entry.
    pub fn hash(&self) -> String {
        let canonical = serde_json::to_string(self).unwrap_or_default();
        let mut hasher = Sha256::new();
        hasher.update(IMAGE_FORMAT.as_bytes());
        hasher.update([0]);
        hasher.update(canonical.as_bytes());
        hex(&hasher.finalize())[..16].to_owned()
    }

    /// The mirror to bootstrap from: `VMREPRO_MIRROR_<RELEASE>`, then
    /// `VMREPRO_MIRROR`, then the recipe's own, then the host's apt sources.
    /// `None` leaves the choice to the bootstrap tool.
    pub fn mirror(&self) -> Option<String> {
        let specific = format!("VMREPRO_MIRROR_{}", self.release.to_uppercase());
        std::env::var(&specific)
            .ok()
            .or_else(|| std::env::var("VMREPRO_MIRROR").ok())
            .filter(|m| !m.trim().is_empty())
            .or_else(|| self.mirror.clone())
            .or_else(host::host_mirror)
    }

    /// The bootstrap command line, without the target directory's creation.
    pub fn bootstrap_command(&self, target: &Path) -> Command {
        let mut command = Command::new("mmdebstrap");
        let mut include = self.packages.clone();
        include.push(self.stock_kernel.clone());
        // The stock kernel needs an initrd; the initramfs generator is only a
        // recommendation of the kernel package, which minbase does not install.
        include.push("initramfs-tools".into());
        command
            .arg("--variant=minbase")
            .arg(format!("--include={}", include.join(",")));
        if !self.debconf.is_empty() {
            let mut selections = String::new();
            for line in &self.debconf {
                selections.push_str(line);
                selections.push('\n');
            }
            command.arg(format!(
                "--essential-hook=printf '%s' {} | chroot \"$1\" debconf-set-selections",
                shell_quote(&selections)
            ));
        }
        command.arg(&self.suite).arg(target);
        if let Some(mirror) = self.mirror() {
            command.arg(mirror);
        }
        command
    }
}

/// Quotes a string for a POSIX shell.
pub fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The recipes in a directory, by release.
pub fn load_recipes(dir: &Path) -> Result<BTreeMap<String, ImageRecipe>, ImageError> {
    let mut recipes = BTreeMap::new();
    let entries = fs::read_dir(dir).map_err(io_error(dir))?;
    for entry in entries {
        let path = entry.map_err(io_error(dir))?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            let recipe = ImageRecipe::load(&path)?;
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            if stem != recipe.release {
                return Err(ImageRecipe::recipe_error(
                    &path,
                    format!(
                        "key `release`: {:?} does not match the file name (expected {stem:?})",
                        recipe.release
                    ),
                ));
            }
            recipes.insert(recipe.release.clone(), recipe);
        }
    }
    Ok(recipes)
}

/// A kernel ready for direct boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    /// The flavour.
    pub flavour: KernelFlavour,
    /// The kernel image (`-kernel`).
    pub image: PathBuf,
    /// The initrd (`-initrd`), if the kernel needs one.
    pub initrd: Option<PathBuf>,
    /// `uname -r` of the kernel.
    pub release: String,
}

/// A built, cached image.
#[derive(Debug, Clone)]
pub struct Image {
    /// The recipe it was built from.
    pub recipe: ImageRecipe,
    /// The cache entry's directory.
    pub dir: PathBuf,
    /// The read-only base disk.
    pub disk: PathBuf,
    /// What the build recorded.
    pub manifest: Manifest,
}

impl Image {
    /// The kernel of a flavour for this image.
    pub fn kernel(&self, flavour: KernelFlavour) -> Kernel {
        match flavour {
            KernelFlavour::Stock => Kernel {
                flavour,
                image: self.dir.join("vmlinuz"),
                initrd: Some(self.dir.join("initrd.img")),
                release: self.manifest.stock_kernel_release.clone(),
            },
        }
    }
}

/// What a finished build records beside its files; written last, so its
/// presence (with matching file sizes) marks a complete entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// The format of the build that made it.
    pub format: String,
    /// The recipe hash.
    pub hash: String,
    /// `uname -r` of the stock kernel.
    pub stock_kernel_release: String,
    /// Size in bytes of each file in the entry.
    pub files: BTreeMap<String, u64>,
    /// Seconds the build took.
    pub build_seconds: f64,
    /// Installed packages and versions (`dpkg-query -W`), for reports.
    pub packages: BTreeMap<String, String>,
}

/// The on-disk cache of images (and, later, kernels and saved states).
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// `VMREPRO_CACHE`, else `$XDG_CACHE_HOME/vmrepro`, else `~/.cache/vmrepro`.
    pub fn from_env() -> Cache {
        let root = std::env::var_os("VMREPRO_CACHE")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("vmrepro"))
            })
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/vmrepro")))
            .unwrap_or_else(|| std::env::temp_dir().join("vmrepro-cache"));
        Cache { root }
    }

    /// A cache at an explicit directory.
    pub fn at(root: impl Into<PathBuf>) -> Cache {
        Cache { root: root.into() }
    }

    /// The cache's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }

    /// The entry for a recipe if it is complete, without building.
    pub fn lookup(&self, recipe: &ImageRecipe) -> Option<Image> {
        let dir = self
            .images_dir()
            .join(format!("{}-{}", recipe.release, recipe.hash()));
        read_entry(&dir, recipe).ok()
    }

    /// The image for a recipe, built if the cache has no complete entry.
    pub fn image(&self, recipe: &ImageRecipe) -> Result<Image, ImageError> {
        if let Some(image) = self.lookup(recipe) {
            return Ok(image);
        }
        let images = self.images_dir();
        fs::create_dir_all(&images).map_err(io_error(&images))?;
        let key = format!("{}-{}", recipe.release, recipe.hash());
        let lock_path = images.join(format!("{key}.lock"));
        let lock = File::create(&lock_path).map_err(io_error(&lock_path))?;
        if lock.try_lock().is_err() {
            progress::note(
                &format!("image {}", recipe.release),
                "another vmrepro is building this image; waiting for it",
            );
            lock.lock().map_err(io_error(&lock_path))?;
        }
        // Under the lock: another process may have finished the entry, and any
        // temporary directory for this key is a leftover of a killed build.
        let dir = images.join(&key);
        match read_entry(&dir, recipe) {
            Ok(image) => return Ok(image),
            Err(_) if dir.exists() => {
                progress::note(
                    &format!("image {}", recipe.release),
                    &format!(
                        "cache entry {} is incomplete or corrupt; rebuilding",
                        dir.display()
                    ),
                );
                fs::remove_dir_all(&dir).map_err(io_error(&dir))?;
            }
            Err(_) => {}
        }
        remove_stale_builds(&images, &key);
        let image = build(recipe, &images, &key)?;
        drop(lock);
        Ok(image)
    }
}

fn remove_stale_builds(images: &Path, key: &str) {
    let prefix = format!(".build-{key}-");
    if let Ok(entries) = fs::read_dir(images) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
}

fn read_entry(dir: &Path, recipe: &ImageRecipe) -> Result<Image, String> {
    let text = fs::read_to_string(dir.join("manifest.json")).map_err(|e| e.to_string())?;
    let manifest: Manifest = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    if manifest.hash != recipe.hash() || manifest.format != IMAGE_FORMAT {
        return Err("manifest is for another recipe".into());
    }
    for (name, size) in &manifest.files {
        let actual = fs::metadata(dir.join(name))
            .map_err(|e| format!("{name}: {e}"))?
            .len();
        if actual != *size {
            return Err(format!("{name}: {actual} bytes, manifest says {size}"));
        }
    }
    Ok(Image {
        recipe: recipe.clone(),
        dir: dir.to_owned(),
        disk: dir.join("rootfs.qcow2"),
        manifest,
    })
}

fn build(recipe: &ImageRecipe, images: &Path, key: &str) -> Result<Image, ImageError> {
    let label = format!("image {}", recipe.release);
    let started = Instant::now();
    let work = tempfile::Builder::new()
        .prefix(&format!(".build-{key}-"))
        .tempdir_in(images)
        .map_err(io_error(images))?;
    let _registration = Supervisor::global().register(None, Some(work.path().to_owned()));
    let failed = |source| ImageError::Build {
        release: recipe.release.clone(),
        source,
    };
    let tree = work.path().join("root");
    let command = recipe.bootstrap_command(&tree);
    progress::note(
        &label,
        &format!(
            "bootstrapping {} with mmdebstrap from {} (about a minute)",
            recipe.suite,
            recipe
                .mirror()
                .unwrap_or_else(|| "mmdebstrap's default mirror".into())
        ),
    );
    process::run_logged(
        &format!("{label}: mmdebstrap"),
        command,
        &work.path().join("mmdebstrap.log"),
        Duration::from_secs(1800),
    )
    .map_err(failed)?;

    progress::note(&label, "preparing the guest for the harness");
    shape_tree(&tree).map_err(|message| ImageError::Tree {
        release: recipe.release.clone(),
        message,
    })?;
    let stock_kernel_release =
        copy_stock_kernel(&tree, work.path()).map_err(|message| ImageError::Tree {
            release: recipe.release.clone(),
            message,
        })?;
    let packages = installed_packages(&tree);

    progress::note(&label, "making the ext4 file system and the qcow2 disk");
    let raw = work.path().join("rootfs.raw");
    let mut mke2fs = Command::new("mke2fs");
    mke2fs
        .args(["-q", "-F", "-t", "ext4", "-L", "vmrepro", "-d"])
        .arg(&tree)
        .arg(&raw)
        .arg(format!("{}M", recipe.disk_mib));
    process::run_logged(
        &format!("{label}: mke2fs"),
        mke2fs,
        &work.path().join("mke2fs.log"),
        Duration::from_secs(600),
    )
    .map_err(failed)?;
    fs::remove_dir_all(&tree).map_err(io_error(&tree))?;
    let disk = work.path().join("rootfs.qcow2");
    let mut convert = Command::new("qemu-img");
    convert
        .args(["convert", "-O", "qcow2"])
        .arg(&raw)
        .arg(&disk);
    process::run_logged(
        &format!("{label}: qemu-img convert"),
        convert,
        &work.path().join("qemu-img.log"),
        Duration::from_secs(600),
    )
    .map_err(failed)?;
    fs::remove_file(&raw).map_err(io_error(&raw))?;

    let mut files = BTreeMap::new();
    for name in ["rootfs.qcow2", "vmlinuz", "initrd.img"] {
        let path = work.path().join(name);
        let len = fs::metadata(&path).map_err(io_error(&path))?.len();
        files.insert(name.to_owned(), len);
        // Base files are never written by a run; make that hold on disk too.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o444)).map_err(io_error(&path))?;
    }
    let manifest = Manifest {
        format: IMAGE_FORMAT.into(),
        hash: recipe.hash(),
        stock_kernel_release,
        files,
        build_seconds: started.elapsed().as_secs_f64(),
        packages,
    };
    let manifest_path = work.path().join("manifest.json");
    let mut file = File::create(&manifest_path).map_err(io_error(&manifest_path))?;
    file.write_all(
        serde_json::to_string_pretty(&manifest)
            .unwrap_or_default()
            .as_bytes(),
    )
    .and_then(|_| file.sync_all())
    .map_err(io_error(&manifest_path))?;

    let dir = images.join(key);
    let work = work.keep();
    fs::rename(&work, &dir).map_err(io_error(&dir))?;
    progress::note(
        &label,
        &format!(
            "built in {:.0}s ({} MiB disk) at {}",
            manifest.build_seconds,
            manifest.files.get("rootfs.qcow2").copied().unwrap_or(0) / (1 << 20),
            dir.display()
        ),
    );
    read_entry(&dir, recipe).map_err(|message| ImageError::Tree {
        release: recipe.release.clone(),
        message,
    })
}

/// Turns a bootstrapped tree into a guest the harness can drive.
fn shape_tree(tree: &Path) -> Result<(), String> {
    let write = |relative: &str, content: &str| -> Result<(), String> {
        let path = tree.join(relative);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        fs::write(&path, content).map_err(|e| format!("{}: {e}", path.display()))
    };
    write("etc/hostname", "vmrepro\n")?;
    write(
        "etc/hosts",
        "127.0.0.1\tlocalhost\n127.0.1.1\tvmrepro\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    )?;
    // The whole virtio disk is the root file system: no partition table.
    write(
        "etc/fstab",
        "/dev/vda\t/\text4\trw,errors=remount-ro\t0\t1\n",
    )?;
    // A root shell on the control port, logged in automatically.
    write(
        &format!("etc/systemd/system/serial-getty@{CONTROL_TTY}.service.d/vmrepro.conf"),
        "[Service]\nExecStart=\nExecStart=-/sbin/agetty --autologin root --noclear --keep-baud 115200,38400,9600 %I $TERM\n",
    )?;
    let wants = tree.join("etc/systemd/system/getty.target.wants");
    fs::create_dir_all(&wants).map_err(|e| format!("{}: {e}", wants.display()))?;
    let link = wants.join(format!("serial-getty@{CONTROL_TTY}.service"));
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink("/lib/systemd/system/serial-getty@.service", &link)
        .map_err(|e| format!("{}: {e}", link.display()))?;
    Ok(())
}

/// Copies the stock kernel and initrd out of `/boot` and returns the kernel's
/// release string.
fn copy_stock_kernel(tree: &Path, out: &Path) -> Result<String, String> {
    let boot = tree.join("boot");
    let mut kernels: Vec<String> = fs::read_dir(&boot)
        .map_err(|e| format!("{}: {e}", boot.display()))?
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("vmlinuz-"))
                .map(str::to_owned)
        })
        .collect();
    kernels.sort();
    let release = kernels.pop().ok_or_else(|| {
        format!(
            "no kernel in {}: is the stock kernel package installed?",
            boot.display()
        )
    })?;
    for (from, to) in [
        (format!("vmlinuz-{release}"), "vmlinuz"),
        (format!("initrd.img-{release}"), "initrd.img"),
    ] {
        let source = boot.join(&from);
        fs::copy(&source, out.join(to)).map_err(|e| format!("{}: {e}", source.display()))?;
    }
    if !tree.join("lib/modules").join(&release).is_dir() {
        return Err(format!("no module tree for the stock kernel {release}"));
    }
    Ok(release)
}

fn installed_packages(tree: &Path) -> BTreeMap<String, String> {
    let admindir = tree.join("var/lib/dpkg");
    let admin = format!("--admindir={}", admindir.display());
    process::output(
        "dpkg-query",
        &[&admin, "-W", "-f", "${Package} ${Version}\\n"],
        Duration::from_secs(30),
    )
    .map(|text| {
        text.lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(p, v)| (p.to_owned(), v.to_owned()))
            .collect()
    })
    .unwrap_or_default()
}

/// Checks within seconds whether a release's archive answers, by fetching
/// its `Release` file with apt's own downloader (which honours the host's apt
/// proxy settings).
pub fn probe_reachable(recipe: &ImageRecipe) -> Result<(), ImageError> {
    let unreachable = |reason: String| ImageError::Unreachable {
        release: recipe.release.clone(),
        reason,
    };
    let Some(mirror) = recipe.mirror() else {
        return Ok(());
    };
    let url = format!(
        "{}/dists/{}/Release",
        mirror.trim_end_matches('/'),
        recipe.suite
    );
    let dir = tempfile::tempdir().map_err(|e| unreachable(e.to_string()))?;
    let dest = dir.path().join("Release");
    let dest_arg = dest.to_string_lossy().into_owned();
    match process::output(
        "/usr/lib/apt/apt-helper",
        &[
            "-o",
            "Acquire::Retries=0",
            "-o",
            "Acquire::http::Timeout=10",
            "download-file",
            &url,
            &dest_arg,
        ],
        Duration::from_secs(30),
    ) {
        Ok(_) => Ok(()),
        Err(ProcessError::Spawn { .. }) => Ok(()),
        Err(ProcessError::Failed { tail, .. }) => Err(unreachable(format!(
            "{url}: {}",
            tail.lines().last().unwrap_or("download failed")
        ))),
        Err(e) => Err(unreachable(format!("{url}: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe() -> ImageRecipe {
        toml::from_str(
            r#"
release = "bookworm"
suite = "bookworm"
packages = ["systemd-sysv", "iptables"]
stock_kernel = "linux-image-cloud-amd64"
debconf = ["iptables-persistent iptables-persistent/autosave_v4 boolean false"]
"#,
        )
        .expect("valid recipe")
    }

    #[test]
    fn hash_changes_with_the_recipe_and_not_otherwise() {
        let a = recipe();
        assert_eq!(a.hash(), recipe().hash());
        let mut b = recipe();
        b.packages.push("vim".into());
        assert_ne!(a.hash(), b.hash());
        assert_eq!(a.hash().len(), 16);
    }

    #[test]
    fn bootstrap_command_preseeds_debconf_and_names_the_mirror() {
        std::env::set_var("VMREPRO_MIRROR_BOOKWORM", "http://mirror.example/debian");
        let command = recipe().bootstrap_command(Path::new("/tmp/x/root"));
        std::env::remove_var("VMREPRO_MIRROR_BOOKWORM");
        let args: Vec<String> = command
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args[0], "--variant=minbase");
        assert_eq!(
            args[1],
            "--include=systemd-sysv,iptables,linux-image-cloud-amd64,initramfs-tools"
        );
        assert_eq!(
            args[2],
            "--essential-hook=printf '%s' 'iptables-persistent iptables-persistent/autosave_v4 boolean false\n' | chroot \"$1\" debconf-set-selections"
        );
        assert_eq!(
            &args[3..],
            ["bookworm", "/tmp/x/root", "http://mirror.example/debian"]
        );
    }

    #[test]
    fn unknown_recipe_keys_are_rejected_with_their_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bookworm.toml");
        fs::write(&path, "release = \"bookworm\"\nsuite = \"bookworm\"\npackages = []\nstock_kernel = \"k\"\nmirorr = \"x\"\n").expect("write");
        let err = ImageRecipe::load(&path)
            .expect_err("typo must fail")
            .to_string();
        assert!(err.contains("line 5"), "{err}");
        assert!(err.contains("mirorr"), "{err}");
    }

    #[test]
    fn a_half_written_entry_is_not_an_entry() {
        let cache_dir = tempfile::tempdir().expect("tempdir");
        let cache = Cache::at(cache_dir.path());
        let recipe = recipe();
        let dir = cache
            .images_dir()
            .join(format!("bookworm-{}", recipe.hash()));
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join("rootfs.qcow2"), b"partial").expect("write");
        assert!(cache.lookup(&recipe).is_none());
        let manifest = Manifest {
            format: IMAGE_FORMAT.into(),
            hash: recipe.hash(),
            stock_kernel_release: "6.1".into(),
            files: [("rootfs.qcow2".to_owned(), 100u64)].into_iter().collect(),
            build_seconds: 1.0,
            packages: BTreeMap::new(),
        };
        fs::write(
            dir.join("manifest.json"),
            serde_json::to_string(&manifest).expect("json"),
        )
        .expect("write");
        assert!(
            cache.lookup(&recipe).is_none(),
            "size mismatch must be detected"
        );
        fs::write(dir.join("rootfs.qcow2"), vec![0u8; 100]).expect("write");
        assert!(cache.lookup(&recipe).is_some());
    }
}
