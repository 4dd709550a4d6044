//! Recipes: how to build what a scenario boots. `images/RELEASE.toml`
//! says how to bootstrap a Debian release, `images/kernels/NAME.toml` how
//! to build a custom kernel. This layer reads them; the build layer builds
//! from them.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::spec::line_column;

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

/// Reads a TOML recipe, naming the line of a bad key or value.
fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, RecipeError> {
    let text =
        fs::read_to_string(path).map_err(|e| recipe_error(path, format!("cannot read: {e}")))?;
    toml::from_str(&text).map_err(|e| {
        let (line, _) = line_column(&text, e.span().map(|s| s.start).unwrap_or(0));
        recipe_error(path, format!("line {line}: {}", e.message().trim()))
    })
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
    pub(crate) fn load(path: &Path) -> Result<ImageRecipe, RecipeError> {
        read_toml(path)
    }
}

/// The recipes in a directory, by release.
pub(crate) fn load_image_recipes(dir: &Path) -> Result<BTreeMap<String, ImageRecipe>, RecipeError> {
    let mut recipes = BTreeMap::new();
    let entries = fs::read_dir(dir).map_err(|e| recipe_error(dir, e.to_string()))?;
    for entry in entries {
        let path = entry.map_err(|e| recipe_error(dir, e.to_string()))?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            let recipe = ImageRecipe::load(&path)?;
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
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
    }
    Ok(recipes)
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
