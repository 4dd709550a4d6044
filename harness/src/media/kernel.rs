//! Kernels booted directly by QEMU: a release's stock kernel (taken out of its
//! image, see [`crate::media::image`]), a kernel built here from a recipe in
//! `images/kernels/` (a Debian `linux-source` package configured with `make
//! allnoconfig` plus the recipe's fragment, which keeps a build to minutes;
//! cached, keyed by the fragment and the source version), or a kernel image
//! given by path.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::media::cache::KeyHash;
use serde::{Deserialize, Serialize};

use crate::host::process::{self, ProcessError};
use crate::host::progress::Events;
use crate::host::{self, HostError};
use crate::media::cache::{Cache, CacheError};
use crate::project::recipe::KernelRecipe;
use crate::project::KernelFlavour;

/// Bump when the build steps change what comes out.
const KERNEL_FORMAT: &str = "vmrepro-kernel-1";

/// The cache kind kernels live under.
pub const KIND: &str = "kernels";

/// Host packages a kernel build needs besides the source package.
const BUILD_PACKAGES: &[&str] = &[
    "make",
    "gcc",
    "bc",
    "flex",
    "bison",
    "libelf-dev",
    "libssl-dev",
    "xz-utils",
    // The image's compressor (`CONFIG_KERNEL_LZ4`).
    "lz4",
];

/// A kernel ready for direct boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    /// The flavour.
    pub(crate) flavour: KernelFlavour,
    /// The kernel image (`-kernel`).
    pub image: PathBuf,
    /// The initrd (`-initrd`), if the kernel needs one.
    pub(crate) initrd: Option<PathBuf>,
    /// `uname -r` of the kernel.
    pub release: String,
}

/// Why a kernel could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The host lacks the source or the tools.
    #[error(transparent)]
    Host(#[from] HostError),
    /// A build step failed.
    #[error("building a kernel: {0}")]
    Build(#[from] ProcessError),
    /// The configuration does not contain what the fragment asks for.
    #[error("building a kernel: the configuration lacks {missing:?}; their dependencies are not met in this kernel version")]
    Config {
        /// Options the fragment sets that the final configuration lacks.
        missing: Vec<String>,
    },
    /// Something else about the build went wrong.
    #[error("kernel: {0}")]
    Other(String),
    /// The cache failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// What a kernel build records about itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct KernelManifest {
    /// `uname -r` of the built kernel.
    pub(crate) release: String,
    /// The source package's version.
    pub(crate) source_version: String,
    /// Seconds the build took.
    pub(crate) build_seconds: f64,
}

impl KernelRecipe {
    /// The cache key of flavour `name` for a source version. The name only
    /// prefixes it, for people reading the cache.
    pub(crate) fn key(&self, name: &str, source_version: &str) -> String {
        let hash = KeyHash::new()
            .part(KERNEL_FORMAT)
            .part(&self.source_package)
            .part(source_version)
            .part(&self.fragment)
            .finish();
        format!("{name}-{hash}")
    }
}

/// The cache key of flavour `name`, built from `recipe`, on this host (it
/// depends on the installed source package, which is installed first if
/// allowed).
pub fn key(cache: &Cache, name: &str, recipe: &KernelRecipe) -> Result<String, KernelError> {
    let packages: Vec<&str> = std::iter::once(recipe.source_package.as_str())
        .chain(BUILD_PACKAGES.iter().copied())
        .collect();
    host::ensure_packages(
        cache.events(),
        cache.may_install(),
        &format!("building kernel {name}"),
        &packages,
    )?;
    let source_version = host::package_version(&recipe.source_package)
        .ok_or_else(|| KernelError::Other(format!("{} is not installed", recipe.source_package)))?;
    Ok(recipe.key(name, &source_version))
}

/// Kernel flavour `name` from its recipe, built into the cache if it is
/// not there.
pub fn built(cache: &Cache, name: &str, recipe: &KernelRecipe) -> Result<Kernel, KernelError> {
    // The common case, once per trial: one dpkg query, one stat.
    if let Some(kernel) = lookup_built(cache, name, recipe) {
        return Ok(kernel);
    }
    let key = key(cache, name, recipe)?;
    let source_version = host::package_version(&recipe.source_package).unwrap_or_default();
    let label = format!("kernel {name}");
    let entry = cache.get_or_build(KIND, &key, &label, |work| {
        build(cache.events(), &label, recipe, &source_version, work)
    })?;
    Ok(Kernel {
        flavour: KernelFlavour::named(name),
        image: entry.dir.join("vmlinuz"),
        initrd: None,
        release: entry.meta.release,
    })
}

/// Kernel flavour `name` from its recipe, if the cache has it, without
/// building or installing anything.
pub fn lookup_built(cache: &Cache, name: &str, recipe: &KernelRecipe) -> Option<Kernel> {
    let version = host::package_version(&recipe.source_package)?;
    let entry = cache.lookup::<KernelManifest>(KIND, &recipe.key(name, &version))?;
    Some(Kernel {
        flavour: KernelFlavour::named(name),
        image: entry.dir.join("vmlinuz"),
        initrd: None,
        release: entry.meta.release,
    })
}

/// Kernel flavour `name` given by path: its release is read from the
/// image's own header (the boot protocol's `kernel_version` string).
pub fn prebuilt(name: &str, image: &Path, initrd: Option<&Path>) -> Result<Kernel, KernelError> {
    let release = bzimage_release(image)
        .map_err(|why| KernelError::Other(format!("{}: {why}", image.display())))?;
    Ok(Kernel {
        flavour: KernelFlavour::named(name),
        image: image.to_owned(),
        initrd: initrd.map(Path::to_owned),
        release,
    })
}

/// The release string of an x86 bzImage: the boot protocol (2.00 and
/// later) puts the offset of a version string, less 0x200, at 0x20E
/// (Documentation/arch/x86/boot.rst, "kernel_version"); the string starts
/// with `uname -r`.
pub(crate) fn bzimage_release(image: &Path) -> Result<String, String> {
    let bytes = std::fs::read(image).map_err(|e| e.to_string())?;
    if bytes.get(0x202..0x206) != Some(b"HdrS".as_slice()) {
        return Err("not an x86 kernel image (no HdrS boot header)".into());
    }
    let pointer = bytes
        .get(0x20E..0x210)
        .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize + 0x200)
        .ok_or("the boot header is cut short")?;
    let text = bytes
        .get(pointer..)
        .ok_or("its version string lies outside the file")?;
    let release: String = text
        .iter()
        .take_while(|b| **b != 0 && **b != b' ')
        .map(|b| char::from(*b))
        .collect();
    if release.is_empty() {
        return Err("its version string is empty".into());
    }
    Ok(release)
}

fn build(
    events: &Events,
    label: &str,
    recipe: &KernelRecipe,
    source_version: &str,
    work: &Path,
) -> Result<KernelManifest, KernelError> {
    let started = Instant::now();
    let tarball = ["tar.xz", "tar.bz2", "tar.gz"]
        .iter()
        .map(|ext| PathBuf::from(format!("/usr/src/{}.{ext}", recipe.source_package)))
        .find(|p| p.exists())
        .ok_or_else(|| {
            KernelError::Other(format!(
                "no source tarball /usr/src/{}.tar.*",
                recipe.source_package
            ))
        })?;
    let src_parent = work.join("src");
    std::fs::create_dir_all(&src_parent).map_err(|e| KernelError::Other(e.to_string()))?;
    let log = work.join("build.log");
    let step =
        |what: &str, mut command: Command, cwd: &Path, timeout: u64| -> Result<(), KernelError> {
            command.current_dir(cwd);
            process::run_logged(
                events,
                &format!("{label}: {what}"),
                command,
                &log,
                Duration::from_secs(timeout),
            )?;
            Ok(())
        };

    events.note(
        label,
        &format!("unpacking {} {source_version}", recipe.source_package),
    );
    let mut tar = Command::new("tar");
    tar.arg("-xf").arg(&tarball);
    step("unpacking the source", tar, &src_parent, 600)?;
    let src = std::fs::read_dir(&src_parent)
        .map_err(|e| KernelError::Other(e.to_string()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("Makefile").exists())
        .ok_or_else(|| KernelError::Other("the source tarball has no kernel tree".into()))?;

    events.note(
        label,
        &format!("configuring: allnoconfig plus {}", recipe.config),
    );
    let fragment = work.join("fragment.config");
    std::fs::write(&fragment, &recipe.fragment).map_err(|e| KernelError::Other(e.to_string()))?;
    let mut make = Command::new("make");
    make.arg("allnoconfig");
    step("make allnoconfig", make, &src, 300)?;
    let mut merge = Command::new("scripts/kconfig/merge_config.sh");
    merge.args(["-m", ".config"]).arg(&fragment);
    step("merging the fragment", merge, &src, 300)?;
    let mut make = Command::new("make");
    make.arg("olddefconfig");
    step("make olddefconfig", make, &src, 300)?;
    let config = std::fs::read_to_string(src.join(".config"))
        .map_err(|e| KernelError::Other(e.to_string()))?;
    let missing: Vec<String> = recipe
        .required_options()
        .into_iter()
        .filter(|o| !config.lines().any(|l| l == format!("{o}=y")))
        .collect();
    if !missing.is_empty() {
        return Err(KernelError::Config { missing });
    }

    let jobs = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    events.note(
        label,
        &format!("compiling with {jobs} jobs (a few minutes; progress every 15s)"),
    );
    let mut make = Command::new("make");
    make.arg(format!("-j{jobs}")).arg("bzImage");
    step("compiling", make, &src, 3600)?;
    let release = process::output(
        "make",
        &["-s", "-C", &src.to_string_lossy(), "kernelrelease"],
        Duration::from_secs(60),
    )?
    .trim()
    .to_owned();
    std::fs::copy(src.join("arch/x86/boot/bzImage"), work.join("vmlinuz"))
        .map_err(|e| KernelError::Other(e.to_string()))?;
    std::fs::copy(src.join(".config"), work.join("config"))
        .map_err(|e| KernelError::Other(e.to_string()))?;
    std::fs::remove_dir_all(&src_parent).map_err(|e| KernelError::Other(e.to_string()))?;
    let _ = std::fs::remove_file(&fragment);
    let build_seconds = started.elapsed().as_secs_f64();
    events.finish(label, &format!("{release} built in {build_seconds:.0}s"));
    Ok(KernelManifest {
        release,
        source_version: source_version.to_owned(),
        build_seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe(fragment: &str) -> KernelRecipe {
        KernelRecipe {
            source_package: "linux-source-6.1".into(),
            config: "linode.config".into(),
            fragment: fragment.into(),
        }
    }

    #[test]
    fn the_key_is_pinned() {
        // A change of the hashing itself would orphan every cached kernel
        // and every CI cache key.
        assert_eq!(
            recipe("CONFIG_X=y\n").key("linode", "6.1.192-2"),
            "linode-a19aacdc18cc8711"
        );
    }

    #[test]
    fn required_options_are_the_ones_turned_on() {
        let r = recipe("# comment\nCONFIG_A=y\n# CONFIG_MODULES is not set\nCONFIG_LOCALVERSION=\"-x\"\nCONFIG_B=y\n");
        assert_eq!(r.required_options(), ["CONFIG_A", "CONFIG_B"]);
    }

    #[test]
    fn the_key_follows_the_fragment_and_the_source_version() {
        let a = recipe("CONFIG_A=y\n");
        assert_eq!(a.key("k", "6.1.1"), a.key("k", "6.1.1"));
        assert_ne!(a.key("k", "6.1.1"), a.key("k", "6.1.2"));
        assert_ne!(
            a.key("k", "6.1.1"),
            recipe("CONFIG_B=y\n").key("k", "6.1.1")
        );
        assert!(a.key("small", "6.1.1").starts_with("small-"));
    }

    #[test]
    fn the_committed_fragment_makes_a_moduleless_linode_kernel() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/kernels/linode.toml");
        let r = KernelRecipe::load(&path).expect("committed recipe loads");
        assert!(r.fragment.contains("# CONFIG_MODULES is not set"));
        assert!(r
            .fragment
            .contains("CONFIG_LOCALVERSION=\"-x86_64-linode\""));
        for option in [
            "CONFIG_BLK_DEV_LOOP",
            "CONFIG_VIRTIO_BLK",
            "CONFIG_EXT4_FS",
            "CONFIG_IP_NF_FILTER",
            "CONFIG_NF_TABLES",
            "CONFIG_DEVTMPFS_MOUNT",
        ] {
            assert!(r.required_options().iter().any(|o| o == option), "{option}");
        }
    }
}
