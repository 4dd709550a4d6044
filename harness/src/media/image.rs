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
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::media::cache::KeyHash;
use serde::{Deserialize, Serialize};

use crate::host;
use crate::host::process::{self, ProcessError};
use crate::host::progress::Events;
use crate::media::cache::{Cache, CacheError};
use crate::media::kernel::Kernel;
use crate::project::recipe::ImageRecipe;
use crate::project::KernelFlavour;

/// Bump when the build changes what ends up in an image, so that old cache
/// entries are not reused.
const IMAGE_FORMAT: &str = "vmrepro-image-6";

/// The keyring that holds the keys of retired releases.
const REMOVED_KEYS: &str = "/usr/share/keyrings/debian-archive-removed-keys.gpg";

/// The serial port the guest's root shell listens on (the second one; the
/// first carries the kernel console).
pub(crate) const CONTROL_TTY: &str = "ttyS1";

/// What agetty prints on the control port when it logs root in.
pub(crate) const AUTOLOGIN_BANNER: &str = "(automatic login)";

/// Why an image could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
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
    /// Packages asked for are not in the release's archive.
    #[error("{release}'s archive has no package {}", .packages.join(", "))]
    UnknownPackages {
        /// The release.
        release: String,
        /// The packages apt could not find.
        packages: Vec<String>,
    },
    /// File system trouble in the cache.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// Other file system trouble.
    #[error("{path}: {source}")]
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
    /// The content hash that names this recipe's cache entry.
    pub(crate) fn hash(&self) -> String {
        let canonical = serde_json::to_string(self).unwrap_or_default();
        KeyHash::new().part(IMAGE_FORMAT).last(canonical)
    }

    /// The mirror to bootstrap from: the settings' (`VMREPRO_MIRROR_<RELEASE>`,
    /// then `VMREPRO_MIRROR`), then the recipe's own, then the host's apt
    /// sources. `None` leaves the choice to the bootstrap tool.
    pub fn mirror(&self) -> Option<String> {
        self.mirror_override
            .clone()
            .or_else(|| self.mirror.clone())
            .or_else(host::host_mirror)
    }

    /// The bootstrap command line, without the target directory's creation.
    pub(crate) fn bootstrap_command(&self, target: &Path) -> Command {
        let mut command = Command::new("mmdebstrap");
        let mut include = self.packages.clone();
        include.extend(self.extra_packages.iter().cloned());
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
                crate::text::shell_quote(&selections)
            ));
        }
        for dir in &self.hook_dirs {
            command.arg(format!("--hook-dir={dir}"));
        }
        if self.archived {
            // The archive of retired releases answers slowly at times; apt
            // retries each download rather than failing the whole build.
            command
                .arg("--aptopt=Acquire::Check-Valid-Until \"false\"")
                .arg("--aptopt=Acquire::Retries \"3\"")
                .arg(format!("--keyring={REMOVED_KEYS}"));
        }
        command.arg(&self.suite).arg(target);
        match (self.mirror(), self.archived) {
            // The archive's key has expired, so its signature cannot verify;
            // trust the archive explicitly rather than turning checks off
            // globally. apt still checks every index against the Release
            // file's hashes.
            (Some(mirror), true) => {
                command.arg(format!("deb [trusted=yes] {mirror} {} main", self.suite));
            }
            (Some(mirror), false) => {
                command.arg(mirror);
            }
            (None, _) => {}
        }
        command
    }

    /// The `mke2fs` command that makes the root file system from a tree.
    pub(crate) fn mke2fs_command(&self, tree: &Path, output: &Path) -> Command {
        let mut command = Command::new("mke2fs");
        command.args(["-q", "-F", "-t", "ext4", "-L", "vmrepro"]);
        if !self.ext4_features.is_empty() {
            command.arg("-O").arg(self.ext4_features.join(","));
        }
        command
            .arg("-d")
            .arg(tree)
            .arg(output)
            .arg(format!("{}M", self.disk_mib));
        command
    }
}

/// A built, cached image.
#[derive(Debug, Clone)]
pub struct Image {
    /// The cache entry's directory.
    pub dir: PathBuf,
    /// The read-only base disk.
    pub(crate) disk: PathBuf,
    /// What the build recorded.
    pub manifest: Manifest,
}

impl Image {
    /// The stock kernel of this image; the other flavours come from
    /// [`crate::media::kernel`].
    pub(crate) fn stock_kernel(&self) -> Kernel {
        Kernel {
            flavour: KernelFlavour::stock(),
            image: self.dir.join("vmlinuz"),
            initrd: Some(self.dir.join("initrd.img")),
            release: self.manifest.stock_kernel_release.clone(),
        }
    }
}

/// What an image build records about itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// The recipe hash.
    pub(crate) hash: String,
    /// `uname -r` of the stock kernel.
    pub stock_kernel_release: String,
    /// Seconds the build took.
    pub build_seconds: f64,
    /// Installed packages and versions (`dpkg-query -W`), for reports.
    pub(crate) packages: BTreeMap<String, String>,
    /// Where the image came from: `mmdebstrap` or `import of FILE`.
    #[serde(default)]
    pub(crate) origin: String,
}

/// The cache kind images live under.
pub const KIND: &str = "images";

/// The cache key of a recipe's image.
pub fn key(recipe: &ImageRecipe) -> String {
    if recipe.extra_packages.is_empty() {
        format!("{}-{}", recipe.release, recipe.hash())
    } else {
        format!("{}+packages-{}", recipe.release, recipe.hash())
    }
}

/// How progress lines name the image of a recipe.
fn label_of(recipe: &ImageRecipe) -> String {
    if recipe.extra_packages.is_empty() {
        format!("image {}", recipe.release)
    } else {
        format!(
            "image {} + {}",
            recipe.release,
            crate::text::ellipsize(&recipe.extra_packages.join(" "), 40)
        )
    }
}

/// The cached image of a recipe, without building: an imported image for
/// the release first, then a built one.
pub fn lookup(cache: &Cache, recipe: &ImageRecipe) -> Option<Image> {
    // An imported image has no scenario's packages in it.
    cache
        .lookup::<Manifest>(IMPORTS, &recipe.release)
        .filter(|_| recipe.extra_packages.is_empty())
        .or_else(|| cache.lookup::<Manifest>(KIND, &key(recipe)))
        .map(image_of)
}

fn image_of(entry: crate::media::cache::Entry<Manifest>) -> Image {
    Image {
        disk: entry.dir.join("rootfs.qcow2"),
        dir: entry.dir,
        manifest: entry.meta,
    }
}

/// The image of a recipe, built into the cache if it is not there.
pub fn image(cache: &Cache, recipe: &ImageRecipe) -> Result<Image, ImageError> {
    if let Some(image) = lookup(cache, recipe) {
        return Ok(image);
    }
    if !recipe.extra_packages.is_empty()
        && cache.lookup::<Manifest>(IMPORTS, &recipe.release).is_some()
    {
        return Err(ImageError::Tree {
            release: recipe.release.clone(),
            message: format!(
                "the scenario adds packages ({}), which cannot be added to the image imported for {};                  import an image that has them, or `vmrepro images clean {}` to use a bootstrapped one",
                recipe.extra_packages.join(", "),
                recipe.release,
                recipe.release
            ),
        });
    }
    let label = label_of(recipe);
    let entry = cache.get_or_build(KIND, &key(recipe), &label, |work| {
        build(cache.events(), recipe, work)
    })?;
    Ok(image_of(entry))
}

fn build(events: &Events, recipe: &ImageRecipe, work: &Path) -> Result<Manifest, ImageError> {
    let label = label_of(recipe);
    let started = Instant::now();
    let failed = |source| ImageError::Build {
        release: recipe.release.clone(),
        source,
    };
    let tree = work.join("root");
    if let Some(missing) = recipe.hook_dirs.iter().find(|d| !Path::new(d).is_dir()) {
        return Err(ImageError::Tree {
            release: recipe.release.clone(),
            message: format!(
                "the recipe needs the mmdebstrap hook directory {missing}, which this host lacks \
                 (mmdebstrap ships its jessie-or-older hooks from version 1.2.4 on; bookworm's 1.3.5 has them)"
            ),
        });
    }
    events.note(
        &label,
        &format!(
            "bootstrapping {} with mmdebstrap from {} (a minute or two)",
            recipe.suite,
            recipe
                .mirror()
                .unwrap_or_else(|| "mmdebstrap's default mirror".into())
        ),
    );
    let log = work.join("mmdebstrap.log");
    if let Err(e) = process::run_logged(
        events,
        &format!("{label}: mmdebstrap"),
        recipe.bootstrap_command(&tree),
        &log,
        Duration::from_secs(1800),
    ) {
        // A package the release does not have is the asker's mistake, said
        // as such rather than as a failed build.
        let missing = missing_packages(&fs::read_to_string(&log).unwrap_or_default());
        if !missing.is_empty() {
            return Err(ImageError::UnknownPackages {
                release: recipe.release.clone(),
                packages: missing,
            });
        }
        return Err(failed(e));
    }
    let manifest = finish_tree(events, recipe, &tree, work, "mmdebstrap".into())?;
    let manifest = Manifest {
        build_seconds: started.elapsed().as_secs_f64(),
        ..manifest
    };
    events.finish(
        &label,
        &format!(
            "built in {:.0}s ({} MiB disk)",
            manifest.build_seconds,
            fs::metadata(work.join("rootfs.qcow2"))
                .map(|m| m.len())
                .unwrap_or(0)
                / (1 << 20),
        ),
    );
    Ok(manifest)
}

/// The packages apt said it cannot find, in a bootstrap's log: "Unable to
/// locate package NAME", and "Package 'NAME' has no installation candidate"
/// for a name that is only referred to (apt-get's wording since before
/// jessie).
fn missing_packages(log: &str) -> Vec<String> {
    let mut missing = Vec::new();
    for line in log.lines() {
        let name = line
            .split_once("Unable to locate package ")
            .map(|(_, rest)| rest.trim())
            .or_else(|| {
                line.split_once("Package '")
                    .and_then(|(_, rest)| rest.split_once("' has no installation candidate"))
                    .map(|(name, _)| name)
            });
        if let Some(name) = name.filter(|n| !n.is_empty()) {
            if !missing.iter().any(|m| m == name) {
                missing.push(name.to_owned());
            }
        }
    }
    missing
}

/// From a root tree to the entry's files: shaped tree, stock kernel and
/// initrd copied out, ext4, qcow2. Removes the tree.
fn finish_tree(
    events: &Events,
    recipe: &ImageRecipe,
    tree: &Path,
    work: &Path,
    origin: String,
) -> Result<Manifest, ImageError> {
    let label = format!("image {}", recipe.release);
    let failed = |source| ImageError::Build {
        release: recipe.release.clone(),
        source,
    };
    let tree_error = |message| ImageError::Tree {
        release: recipe.release.clone(),
        message,
    };
    events.note(&label, "preparing the guest for the harness");
    shape_tree(tree).map_err(tree_error)?;
    let stock_kernel_release = copy_stock_kernel(tree, work).map_err(tree_error)?;
    let packages = installed_packages(tree);

    events.note(&label, "making the ext4 file system and the qcow2 disk");
    let raw = work.join("rootfs.raw");
    process::run_logged(
        events,
        &format!("{label}: mke2fs"),
        recipe.mke2fs_command(tree, &raw),
        &work.join("mke2fs.log"),
        Duration::from_secs(600),
    )
    .map_err(failed)?;
    fs::remove_dir_all(tree).map_err(io_error(tree))?;
    let disk = work.join("rootfs.qcow2");
    super::qcow2_from_raw(events, &label, &raw, &disk, work).map_err(failed)?;
    fs::remove_file(&raw).map_err(io_error(&raw))?;
    for log in ["mmdebstrap.log", "mke2fs.log", "tar.log", "debugfs.log"] {
        let _ = fs::remove_file(work.join(log));
    }
    Ok(Manifest {
        hash: recipe.hash(),
        stock_kernel_release,
        build_seconds: 0.0,
        packages,
        origin,
    })
}

/// The cache kind imported images live under, one per release.
pub(crate) const IMPORTS: &str = "imports";

/// Imports a user's own root file system as the image of a release: a
/// tarball (`.tar`, `.tar.gz`, `.tar.xz`, `.tar.zst`, …) or a disk image in
/// any format `qemu-img` reads, either a bare ext2/3/4 file system or a disk
/// with an MBR or GPT partition table (the largest ext partition is taken).
/// It is used instead of a built image from then on, until removed with
/// `vmrepro images clean RELEASE`.
pub fn import(cache: &Cache, recipe: &ImageRecipe, file: &Path) -> Result<Image, ImageError> {
    let label = format!("import {}", recipe.release);
    let file = fs::canonicalize(file).map_err(io_error(file))?;
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let is_tarball = [
        ".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.zst", ".tar.bz2",
    ]
    .iter()
    .any(|ext| name.ends_with(ext));
    let _ = cache.remove(|row| row.kind == IMPORTS && row.name == recipe.release);
    let events = cache.events();
    let entry = cache.get_or_build(IMPORTS, &recipe.release, &label, |work| {
        let started = Instant::now();
        let tree = work.join("root");
        fs::create_dir_all(&tree).map_err(io_error(&tree))?;
        let failed = |source| ImageError::Build {
            release: recipe.release.clone(),
            source,
        };
        if is_tarball {
            let mut tar = Command::new("tar");
            tar.arg("-xpf")
                .arg(&file)
                .arg("-C")
                .arg(&tree)
                .arg("--numeric-owner");
            events.note(&label, &format!("unpacking {}", file.display()));
            process::run_logged(
                events,
                &format!("{label}: tar"),
                tar,
                &work.join("tar.log"),
                Duration::from_secs(1800),
            )
            .map_err(failed)?;
        } else {
            let raw = work.join("disk.raw");
            let mut convert = Command::new("qemu-img");
            convert.args(["convert", "-O", "raw"]).arg(&file).arg(&raw);
            events.note(&label, &format!("reading {}", file.display()));
            process::run_logged(
                events,
                &format!("{label}: qemu-img convert"),
                convert,
                &work.join("qemu-img.log"),
                Duration::from_secs(1800),
            )
            .map_err(failed)?;
            let offset = crate::media::partition::find_ext_filesystem(&raw).map_err(|message| {
                ImageError::Tree {
                    release: recipe.release.clone(),
                    message: format!("{}: {message}", file.display()),
                }
            })?;
            // debugfs copies the tree out without mounting anything.
            let mut debugfs = Command::new("debugfs");
            debugfs
                .arg("-R")
                .arg(format!("rdump / {}", tree.display()))
                .arg(format!("{}?offset={offset}", raw.display()));
            process::run_logged(
                events,
                &format!("{label}: debugfs rdump"),
                debugfs,
                &work.join("debugfs.log"),
                Duration::from_secs(1800),
            )
            .map_err(failed)?;
            fs::remove_file(&raw).map_err(io_error(&raw))?;
        }
        let manifest = finish_tree(
            events,
            recipe,
            &tree,
            work,
            format!("import of {}", file.display()),
        )?;
        Ok::<_, ImageError>(Manifest {
            build_seconds: started.elapsed().as_secs_f64(),
            ..manifest
        })
    })?;
    Ok(image_of(entry))
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
    // In emergency and rescue mode, a root shell on the kernel console
    // after Enter, although root has no password: the harness takes its
    // captures there. systemd-sulogin-shell passes `--force` to sulogin
    // when this is set in its environment (systemd v240,
    // src/sulogin-shell/sulogin-shell.c: `getenv_bool("SYSTEMD_SULOGIN_FORCE")`;
    // buster's 241 on), and util-linux's sulogin then opens a shell for a
    // locked root (login-utils/sulogin.c since 2.27). jessie's 215 and
    // stretch's 232 run sulogin themselves, without it: there the mode
    // stays closed, and the console is the evidence. Nothing reads this
    // outside those two modes.
    for mode in ["emergency", "rescue"] {
        write(
            &format!("etc/systemd/system/{mode}.service.d/vmrepro.conf"),
            "[Service]\nEnvironment=SYSTEMD_SULOGIN_FORCE=1\n",
        )?;
    }
    mark_updated(tree)?;
    let wants = tree.join("etc/systemd/system/getty.target.wants");
    fs::create_dir_all(&wants).map_err(|e| format!("{}: {e}", wants.display()))?;
    let link = wants.join(format!("serial-getty@{CONTROL_TTY}.service"));
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink("/lib/systemd/system/serial-getty@.service", &link)
        .map_err(|e| format!("{}: {e}", link.display()))?;
    Ok(())
}

/// Marks /etc and /var as up to date with /usr, as systemd-update-done
/// does at the end of a first boot: otherwise every unit with
/// `ConditionNeedsUpdate=` (ldconfig, systemd-sysusers, the journal's
/// catalog…) runs at the first boot and not at the next, and a reboot would
/// seem to change them. The file holds /usr's modification time
/// (`TIMESTAMP_NSEC=`, read first by systemd 246 on, src/shared/condition.c
/// `condition_test_needs_update`) and has that time itself (what older
/// versions compare).
fn mark_updated(tree: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt as _;
    let usr = tree.join("usr");
    let meta = fs::metadata(&usr).map_err(|e| format!("{}: {e}", usr.display()))?;
    let nsec = (meta.mtime() as i128) * 1_000_000_000 + meta.mtime_nsec() as i128;
    let modified = meta
        .modified()
        .map_err(|e| format!("{}: {e}", usr.display()))?;
    for dir in ["etc", "var"] {
        let path = tree.join(dir).join(".updated");
        fs::write(
            &path,
            format!("# This file was created by systemd-update-done. Its only\n# purpose is to hold a timestamp of the time this directory\n# was updated. See man:systemd-update-done.service(8).\nTIMESTAMP_NSEC={nsec}\n"),
        )
        .map_err(|e| format!("{}: {e}", path.display()))?;
        fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(modified))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
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

/// How many times the probe asks before it calls an archive unreachable,
/// and how long it waits before each repeat: the archive of retired
/// releases answers slowly at times.
const PROBE_TRIES: &[Duration] = &[
    Duration::ZERO,
    Duration::from_secs(2),
    Duration::from_secs(5),
];

/// Checks within seconds whether a release's archive answers, by fetching
/// its `Release` file with apt's own downloader (which honours the host's apt
/// proxy settings). A slow or refused answer is asked again; a host name
/// that does not resolve is final at once.
pub fn probe_reachable(recipe: &ImageRecipe) -> Result<(), ImageError> {
    let mut last = Ok(());
    for pause in PROBE_TRIES {
        std::thread::sleep(*pause);
        last = probe_once(recipe);
        match &last {
            Ok(()) => return Ok(()),
            Err(ImageError::Unreachable { reason, .. })
                if reason.contains("Could not resolve")
                    || reason.contains("Temporary failure resolving") =>
            {
                return last;
            }
            Err(_) => {}
        }
    }
    last
}

fn probe_once(recipe: &ImageRecipe) -> Result<(), ImageError> {
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
        Err(ProcessError::Failed { tail, .. }) => {
            // apt-helper ends with a bare "E: Download Failed"; the line
            // before it says why ("Could not resolve …", a timeout).
            let line = tail
                .lines()
                .rev()
                .map(str::trim)
                .find(|l| !l.is_empty() && *l != "E: Download Failed")
                .unwrap_or("download failed");
            // "E: Failed to fetch URL  Could not resolve 'host'": the why, then the URL.
            let why = line
                .trim_start_matches("E: ")
                .trim_start_matches("Failed to fetch ")
                .trim_start_matches(url.as_str())
                .trim();
            Err(unreachable(format!("{why} ({url})")))
        }
        Err(e) => Err(unreachable(format!("{url}: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe(text: &str) -> ImageRecipe {
        toml::from_str(text).expect("valid recipe")
    }

    fn bookworm() -> ImageRecipe {
        recipe(
            r#"
release = "bookworm"
suite = "bookworm"
packages = ["systemd-sysv", "iptables"]
stock_kernel = "linux-image-cloud-amd64"
debconf = ["iptables-persistent iptables-persistent/autosave_v4 boolean false"]
"#,
        )
    }

    fn args(command: &Command) -> Vec<String> {
        command
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn hash_changes_with_the_recipe_and_not_otherwise() {
        let a = bookworm();
        assert_eq!(a.hash(), bookworm().hash());
        let mut b = bookworm();
        b.packages.push("vim".into());
        assert_ne!(a.hash(), b.hash());
        assert_eq!(a.hash().len(), 16);
        // Pinned: a change of the hashing itself would orphan every cache
        // entry and every CI cache key.
        assert_eq!(a.hash(), "80bc245d82d40bff");
    }

    #[test]
    fn bootstrap_command_preseeds_debconf_and_names_the_mirror() {
        let mut recipe = bookworm();
        recipe.mirror_override = Some("http://mirror.example/debian".into());
        let command = recipe.bootstrap_command(Path::new("/tmp/x/root"));
        let args = args(&command);
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

    /// The committed jessie recipe, exactly as a build reads it.
    fn committed_jessie() -> ImageRecipe {
        ImageRecipe::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/jessie.toml"))
            .expect("images/jessie.toml is a valid recipe")
    }

    #[test]
    fn an_archived_release_trusts_the_archive_and_ignores_valid_until() {
        let jessie = committed_jessie();
        let args = args(&jessie.bootstrap_command(Path::new("/t/root")));
        assert_eq!(
            args,
            [
                "--variant=minbase",
                "--include=systemd-sysv,udev,kmod,iptables,iptables-persistent,iproute2,linux-image-amd64,initramfs-tools",
                "--essential-hook=printf '%s' 'iptables-persistent iptables-persistent/autosave_v4 boolean false\niptables-persistent iptables-persistent/autosave_v6 boolean false\n' | chroot \"$1\" debconf-set-selections",
                "--hook-dir=/usr/share/mmdebstrap/hooks/jessie-or-older",
                "--aptopt=Acquire::Check-Valid-Until \"false\"",
                "--aptopt=Acquire::Retries \"3\"",
                "--keyring=/usr/share/keyrings/debian-archive-removed-keys.gpg",
                "jessie",
                "/t/root",
                "deb [trusted=yes] http://archive.debian.org/debian jessie main",
            ]
        );
        // The hook is part of the recipe, so it is part of the image's key.
        let mut without = jessie.clone();
        without.hook_dirs.clear();
        assert_ne!(jessie.hash(), without.hash());
        let mke2fs = jessie.mke2fs_command(Path::new("/t/root"), Path::new("/t/rootfs.raw"));
        assert_eq!(
            self::args(&mke2fs),
            [
                "-q",
                "-F",
                "-t",
                "ext4",
                "-L",
                "vmrepro",
                "-O",
                "^metadata_csum,^metadata_csum_seed,^orphan_file",
                "-d",
                "/t/root",
                "/t/rootfs.raw",
                "2048M",
            ]
        );
        // A user's mirror (a local copy of the archive) still wins.
        let mut jessie = jessie;
        jessie.mirror_override = Some("http://proxy.local:3142/debian".into());
        assert_eq!(
            jessie.mirror().as_deref(),
            Some("http://proxy.local:3142/debian")
        );
        // Without changing which image it is.
        assert_eq!(jessie.hash(), committed_jessie().hash());
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
    fn the_shaped_tree_has_a_root_shell_on_the_control_port() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(dir.path().join("usr/bin")).expect("usr");
        fs::create_dir_all(dir.path().join("var")).expect("var");
        shape_tree(dir.path()).expect("shape");
        let usr = fs::metadata(dir.path().join("usr")).expect("usr");
        for updated in ["etc/.updated", "var/.updated"] {
            let path = dir.path().join(updated);
            let text = fs::read_to_string(&path).expect("stamp");
            let nsec = i128::from(usr.mtime()) * 1_000_000_000 + i128::from(usr.mtime_nsec());
            assert!(
                text.ends_with(&format!("TIMESTAMP_NSEC={nsec}\n")),
                "{text}"
            );
            let stamp = fs::metadata(&path).expect("stamp");
            assert_eq!(
                (stamp.mtime(), stamp.mtime_nsec()),
                (usr.mtime(), usr.mtime_nsec())
            );
        }
        let getty = fs::read_to_string(
            dir.path()
                .join("etc/systemd/system/serial-getty@ttyS1.service.d/vmrepro.conf"),
        )
        .expect("drop-in");
        assert!(getty.contains("--autologin root"));
        for mode in ["emergency", "rescue"] {
            let dropin = fs::read_to_string(
                dir.path()
                    .join(format!("etc/systemd/system/{mode}.service.d/vmrepro.conf")),
            )
            .expect("drop-in");
            assert_eq!(dropin, "[Service]\nEnvironment=SYSTEMD_SULOGIN_FORCE=1\n");
        }
        let link = fs::read_link(
            dir.path()
                .join("etc/systemd/system/getty.target.wants/serial-getty@ttyS1.service"),
        )
        .expect("link");
        assert_eq!(link, Path::new("/lib/systemd/system/serial-getty@.service"));
        assert_eq!(
            fs::read_to_string(dir.path().join("etc/fstab")).expect("fstab"),
            "/dev/vda\t/\text4\trw,errors=remount-ro\t0\t1\n"
        );
    }
}
