//! Recipes: how to build what a scenario boots. `images/RELEASE.toml`
//! says how to bootstrap a Debian release, `images/kernels/NAME.toml` how
//! to build a custom kernel. This layer reads them; the build layer builds
//! from them.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::project::line_column;

/// A recipe file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct RecipeError {
    /// The recipe file (or the kernel configuration fragment).
    pub path: PathBuf,
    /// What is wrong, with the line where known.
    pub message: String,
}

fn recipe_error(path: &Path, message: String) -> RecipeError {
    RecipeError {
        path: path.to_owned(),
        message,
    }
}

include!(concat!(env!("OUT_DIR"), "/built_in.rs"));

/// Reads a TOML recipe, naming the line of a bad key or value.
#[cfg(test)]
fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, RecipeError> {
    let text =
        fs::read_to_string(path).map_err(|e| recipe_error(path, format!("cannot read: {e}")))?;
    parse_toml(path, &text)
}

fn parse_toml<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T, RecipeError> {
    toml::from_str(text).map_err(|e| {
        let (line, _) = line_column(text, e.span().map(|s| s.start).unwrap_or(0));
        recipe_error(path, format!("line {line}: {}", e.message().trim()))
    })
}

/// How errors name a recipe built into the binary.
fn built_in_path(relative: &str) -> PathBuf {
    PathBuf::from(format!("(built in) images/{relative}"))
}

/// A file of the project's `images/` folder, or else the built-in one.
fn recipe_text(images: &Path, relative: &str) -> Option<(PathBuf, String)> {
    let own = images.join(relative);
    if let Ok(text) = fs::read_to_string(&own) {
        return Some((own, text));
    }
    BUILT_IN
        .iter()
        .find(|(path, _)| *path == relative)
        .map(|(_, text)| (built_in_path(relative), (*text).to_owned()))
}

/// The `.toml` files of one folder of recipes (`""` or `"kernels"`): the
/// built-in ones and the project's, by file stem.
fn recipe_names(images: &Path, folder: &str) -> Vec<String> {
    let prefix = if folder.is_empty() {
        String::new()
    } else {
        format!("{folder}/")
    };
    let mut names: Vec<String> = BUILT_IN
        .iter()
        .filter_map(|(path, _)| path.strip_prefix(prefix.as_str()))
        .filter(|rest| !rest.contains('/'))
        .filter_map(|rest| rest.strip_suffix(".toml"))
        .map(str::to_owned)
        .collect();
    if let Ok(entries) = fs::read_dir(images.join(folder)) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "toml") {
                if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                    names.push(stem.to_owned());
                }
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

/// A release recipe: how to bootstrap one Debian release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRecipe {
    /// Release code name, as scenario matrices name it.
    pub release: String,
    /// The archive suite to bootstrap.
    pub(crate) suite: String,
    /// The mirror this release must come from; `None` means the host's
    /// mirror (or the bootstrap tool's default).
    #[serde(default)]
    pub(crate) mirror: Option<String>,
    /// Whether the release lives in the archive of retired releases: its
    /// Release files have expired and its signing key has too, so apt must
    /// not check `Valid-Until` and cannot verify the signature.
    #[serde(default)]
    pub(crate) archived: bool,
    /// Packages installed on top of the minimal base.
    pub(crate) packages: Vec<String>,
    /// The release's stock kernel package.
    pub(crate) stock_kernel: String,
    /// debconf answers given before packages are configured, so nothing prompts.
    #[serde(default)]
    pub(crate) debconf: Vec<String>,
    /// ext4 feature switches for `mke2fs -O`, such as `^orphan_file`: today's
    /// mke2fs turns on features that old kernels and old e2fsck reject.
    #[serde(default)]
    pub(crate) ext4_features: Vec<String>,
    /// Size of the root file system in MiB.
    #[serde(default = "default_disk_mib")]
    pub(crate) disk_mib: u64,
    /// mmdebstrap hook directories (`--hook-dir`), such as the
    /// `jessie-or-older` hooks that jessie's essential set needs. Absent
    /// from the hash when empty, so recipes without hooks keep their keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) hook_dirs: Vec<String>,
    /// Packages a scenario adds (`packages` in the scenario), sorted; never
    /// in a recipe file. Absent from the hash when empty, so the release's
    /// own image keeps its key, and every scenario asking for the same set
    /// shares one image.
    #[serde(skip_deserializing, skip_serializing_if = "Vec::is_empty")]
    pub(crate) extra_packages: Vec<String>,
    /// The mirror the run's settings give for this release, over the
    /// recipe's own; not in the hash: the same release from another mirror
    /// is the same image.
    #[serde(skip)]
    pub(crate) mirror_override: Option<String>,
}

fn default_disk_mib() -> u64 {
    2048
}

impl ImageRecipe {
    /// This recipe with `packages` added (sorted, without duplicates and
    /// without those the release's image has already).
    pub fn with_extra_packages(&self, packages: &[String]) -> ImageRecipe {
        let mut extra: Vec<String> = self
            .extra_packages
            .iter()
            .chain(packages)
            .filter(|p| !self.packages.contains(p))
            .cloned()
            .collect();
        extra.sort();
        extra.dedup();
        ImageRecipe {
            extra_packages: extra,
            ..self.clone()
        }
    }

    /// Reads a recipe file.
    #[cfg(test)]
    pub(crate) fn load(path: &Path) -> Result<ImageRecipe, RecipeError> {
        read_toml(path)
    }
}

/// The release recipes, by release: those built into the binary, each
/// replaced by the project's own `images/RELEASE.toml` where it has one, and
/// the project's others.
pub(crate) fn load_image_recipes(
    images: &Path,
) -> Result<BTreeMap<String, ImageRecipe>, RecipeError> {
    let mut recipes = BTreeMap::new();
    for stem in recipe_names(images, "") {
        let Some((path, text)) = recipe_text(images, &format!("{stem}.toml")) else {
            continue;
        };
        let recipe: ImageRecipe = parse_toml(&path, &text)?;
        if stem != recipe.release {
            return Err(recipe_error(
                &path,
                format!(
                    "key `release`: {:?} does not match the file name (expected {stem:?})",
                    recipe.release
                ),
            ));
        }
        recipes.insert(recipe.release.clone(), recipe);
    }
    Ok(recipes)
}

/// A kernel flavour other than `stock`: a file `images/kernels/NAME.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSource {
    /// Built here from a Debian kernel source package and a configuration
    /// fragment, and cached.
    Recipe(KernelRecipe),
    /// A kernel image given by path, as a provider boots it, with an
    /// optional initrd.
    Prebuilt {
        /// The kernel image (bzImage).
        image: PathBuf,
        /// Its initrd, if it needs one.
        initrd: Option<PathBuf>,
    },
}

/// A kernel flavour's file as written: a recipe (`source_package` and
/// `config`) or a kernel by path (`image`, optionally `initrd`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKernel {
    source_package: Option<String>,
    config: Option<String>,
    image: Option<String>,
    initrd: Option<String>,
}

/// The kernel flavours, by name: the built-in ones, each replaced by the
/// project's own `images/kernels/NAME.toml` where it has one, and the
/// project's others.
pub(crate) fn load_kernels(images: &Path) -> Result<BTreeMap<String, KernelSource>, RecipeError> {
    let mut kernels = BTreeMap::new();
    for name in recipe_names(images, "kernels") {
        if name == crate::project::KernelFlavour::STOCK {
            return Err(recipe_error(
                &images.join("kernels/stock.toml"),
                "`stock` is the release's own kernel and cannot be redefined".into(),
            ));
        }
        let Some((path, text)) = recipe_text(images, &format!("kernels/{name}.toml")) else {
            continue;
        };
        let raw: RawKernel = parse_toml(&path, &text)?;
        let beside = |file: &str| -> PathBuf { path.parent().unwrap_or(Path::new(".")).join(file) };
        let source = match raw {
            RawKernel {
                source_package: Some(source_package),
                config: Some(config),
                image: None,
                initrd: None,
            } => {
                let (_, fragment) = recipe_text(images, &format!("kernels/{config}"))
                    .filter(|_| !config.contains('/'))
                    .ok_or_else(|| {
                        recipe_error(
                            &beside(&config),
                            "cannot read the configuration fragment (it must sit beside the recipe)"
                                .into(),
                        )
                    })?;
                KernelSource::Recipe(KernelRecipe {
                    source_package,
                    config,
                    fragment,
                })
            }
            RawKernel {
                source_package: None,
                config: None,
                image: Some(image),
                initrd,
            } => {
                let image = beside(&image);
                let initrd = initrd.map(|i| beside(&i));
                for file in std::iter::once(&image).chain(initrd.iter()) {
                    if !file.is_file() {
                        return Err(recipe_error(
                            &path,
                            format!("{} does not exist", file.display()),
                        ));
                    }
                }
                KernelSource::Prebuilt { image, initrd }
            }
            _ => {
                return Err(recipe_error(
                    &path,
                    "give either `source_package` and `config` (a kernel built here) or `image` and optionally `initrd` (a kernel by path)".into(),
                ))
            }
        };
        kernels.insert(name, source);
    }
    Ok(kernels)
}

/// How to build a custom kernel: `images/kernels/NAME.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelRecipe {
    /// The Debian package with the kernel source tarball in `/usr/src`.
    pub source_package: String,
    /// The configuration fragment, relative to the recipe.
    pub(crate) config: String,
    /// The fragment's text (read from `config`).
    #[serde(skip)]
    pub(crate) fragment: String,
}

impl KernelRecipe {
    /// Reads a recipe and its fragment.
    #[cfg(test)]
    pub(crate) fn load(path: &Path) -> Result<KernelRecipe, RecipeError> {
        let mut recipe: KernelRecipe = read_toml(path)?;
        let fragment_path = path.parent().unwrap_or(Path::new(".")).join(&recipe.config);
        recipe.fragment = fs::read_to_string(&fragment_path).map_err(|e| {
            recipe_error(
                &fragment_path,
                format!("cannot read the configuration fragment: {e}"),
            )
        })?;
        Ok(recipe)
    }

    /// The options the fragment turns on (`CONFIG_X=y`).
    pub(crate) fn required_options(&self) -> Vec<String> {
        self.fragment
            .lines()
            .filter_map(|l| l.trim().strip_suffix("=y"))
            .filter(|o| o.starts_with("CONFIG_"))
            .map(str::to_owned)
            .collect()
    }
}
