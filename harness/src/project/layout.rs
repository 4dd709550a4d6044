//! A vmrepro project: the directory holding `scenarios/` and `snapshots/`,
//! and optionally `images/` with its own release recipes and kernel
//! flavours (the ones built into the binary serve otherwise).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::project::recipe::{self, ImageRecipe, KernelSource, RecipeError};
use crate::project::{KernelFlavour, Known, Scenario, ScenarioError};

/// Why a project could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    /// No project directory was found.
    #[error("no vmrepro project (a directory with scenarios/) at or above {0}; give --project DIR or set VMREPRO_ROOT")]
    NotFound(PathBuf),
    /// A recipe is invalid.
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    /// A scenario is invalid.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// No recipe in `images/` for a release that was asked for.
    #[error("no image recipe for release {release:?} (known: {known})")]
    UnknownRelease {
        /// The release asked for.
        release: String,
        /// The releases that have one.
        known: String,
    },
    /// Two scenario files give the same name.
    #[error("{}: the scenario name {name:?} is taken already by {}", .second.display(), .first.display())]
    DuplicateScenario {
        /// The name.
        name: String,
        /// The first file that uses it.
        first: PathBuf,
        /// The second.
        second: PathBuf,
    },
    /// A relative project path could not be made absolute (the working
    /// directory is gone).
    #[error("{}: cannot make the project's path absolute: {source}", .path.display())]
    Absolute {
        /// The path given.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A kernel flavour was asked for that has no file in `images/kernels/`.
    #[error("unknown kernel flavour {name:?} (known: {known})")]
    UnknownKernel {
        /// The flavour asked for.
        name: String,
        /// The flavours that exist.
        known: String,
    },
    /// No scenario has the name asked for.
    #[error("no scenario named {name:?} (known: {known})")]
    UnknownScenario {
        /// The name asked for.
        name: String,
        /// The scenarios that exist.
        known: String,
    },
    /// Listing a directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// The project's directories and its release recipes.
#[derive(Debug, Clone)]
pub struct Project {
    /// The project root.
    pub root: PathBuf,
    /// Where runs put their artifacts (see [`Project::artifacts_root`]).
    artifacts: PathBuf,
    /// Release recipes by release name.
    pub recipes: BTreeMap<String, ImageRecipe>,
    /// Kernel flavours other than `stock`, by name (`images/kernels/`).
    pub kernels: BTreeMap<String, KernelSource>,
}

impl Project {
    /// Opens the first directory at or above `start` that has `scenarios/`.
    pub fn discover(start: &Path) -> Result<Project, ProjectError> {
        let root = start
            .ancestors()
            .find(|d| d.join("scenarios").is_dir())
            .map(Path::to_path_buf)
            .ok_or_else(|| ProjectError::NotFound(start.to_owned()))?;
        Project::open(&root)
    }

    /// The same project with its artifacts in `dir` (relative to the
    /// project, or absolute): a second run that must not overwrite the
    /// first (CI's cold re-run) names its own.
    pub fn with_artifacts(mut self, dir: &Path) -> Project {
        self.artifacts = self.root.join(dir);
        self
    }

    /// The same project with its releases bootstrapped from `mirror`, or
    /// from the release's own entry in `by_release` (lower-case names),
    /// instead of the recipes' mirrors.
    pub fn with_mirrors(
        mut self,
        mirror: Option<&str>,
        by_release: &BTreeMap<String, String>,
    ) -> Project {
        for (release, recipe) in &mut self.recipes {
            if let Some(chosen) = by_release.get(release).map(String::as_str).or(mirror) {
                recipe.mirror_override = Some(chosen.to_owned());
            }
        }
        self
    }

    /// Opens the project at `root`.
    pub fn open(root: &Path) -> Result<Project, ProjectError> {
        // Every path derived from the root must hold from any working
        // directory: insta reads a relative snapshot path against the
        // source file that asserts, not against the working directory.
        let root = &std::path::absolute(root).map_err(|source| ProjectError::Absolute {
            path: root.to_owned(),
            source,
        })?;
        let images = root.join("images");
        let recipes = recipe::load_image_recipes(&images)?;
        let kernels = recipe::load_kernels(&images)?;
        Ok(Project {
            root: root.to_owned(),
            artifacts: root.join("target/vmrepro"),
            recipes,
            kernels,
        })
    }

    /// Every kernel flavour's name: `stock` and the files in `images/kernels/`.
    pub fn kernel_names(&self) -> Vec<String> {
        std::iter::once(KernelFlavour::STOCK.to_owned())
            .chain(self.kernels.keys().cloned())
            .collect()
    }

    /// A kernel flavour by name, or an error that lists the known ones.
    pub fn kernel_flavour(&self, name: &str) -> Result<KernelFlavour, ProjectError> {
        if self.kernel_names().iter().any(|k| k == name) {
            Ok(KernelFlavour::named(name))
        } else {
            Err(ProjectError::UnknownKernel {
                name: name.to_owned(),
                known: self.kernel_names().join(", "),
            })
        }
    }

    /// What the names of scenario files are checked against.
    pub(crate) fn known(&self) -> Known {
        Known {
            releases: self.recipes.keys().cloned().collect(),
            kernels: self.kernel_names(),
        }
    }

    /// `snapshots/`.
    pub fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    /// `scenarios/`.
    pub fn scenarios_dir(&self) -> PathBuf {
        self.root.join("scenarios")
    }

    /// The recipe of a release, or an error that lists the known ones.
    pub fn recipe(&self, release: &str) -> Result<&ImageRecipe, ProjectError> {
        self.recipes
            .get(release)
            .ok_or_else(|| ProjectError::UnknownRelease {
                release: release.to_owned(),
                known: self.recipes.keys().cloned().collect::<Vec<_>>().join(", "),
            })
    }

    /// Where a run's artifacts go: `target/vmrepro/<scenario>/<cell>/`.
    pub fn artifacts_dir(&self, scenario: &str, cell: &str) -> PathBuf {
        self.artifacts_root().join(scenario).join(cell)
    }

    /// The folder of every cell's artifacts: `target/vmrepro` in the
    /// project unless [`Project::with_artifacts`] says otherwise.
    pub fn artifacts_root(&self) -> PathBuf {
        self.artifacts.clone()
    }

    /// Every scenario file, sorted by name.
    pub fn scenarios(&self) -> Result<Vec<Scenario>, ProjectError> {
        let dir = self.scenarios_dir();
        let io = |source| ProjectError::Io {
            path: dir.clone(),
            source,
        };
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        paths.sort();
        let known = self.known();
        let mut scenarios = Vec::new();
        for path in paths {
            let scenario = Scenario::load(&path, &known)?;
            // Trials, snapshots and artifacts are named after it.
            if let Some(first) = scenarios
                .iter()
                .find(|s: &&Scenario| s.name == scenario.name)
            {
                return Err(ProjectError::DuplicateScenario {
                    name: scenario.name.clone(),
                    first: first.path.clone(),
                    second: path,
                });
            }
            scenarios.push(scenario);
        }
        Ok(scenarios)
    }

    /// Loads a scenario by name, or from a path.
    pub fn scenario(&self, name_or_path: &str) -> Result<Scenario, ProjectError> {
        let known = self.known();
        let as_path = Path::new(name_or_path);
        if name_or_path.ends_with(".toml") && as_path.exists() {
            return Ok(Scenario::load(as_path, &known)?);
        }
        let path = self.scenarios_dir().join(format!("{name_or_path}.toml"));
        if path.exists() {
            return Ok(Scenario::load(&path, &known)?);
        }
        // By the name inside the file, which need not be the file's.
        let scenarios = self.scenarios()?;
        if let Some(found) = scenarios.iter().find(|s| s.name == name_or_path) {
            return Ok(found.clone());
        }
        let known: Vec<String> = scenarios.into_iter().map(|s| s.name).collect();
        Err(ProjectError::UnknownScenario {
            name: name_or_path.to_owned(),
            known: known.join(", "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A project given by a relative path (`--project tests/reboot`) has
    /// an absolute root, and so absolute snapshot and artifact folders:
    /// relative ones would be read against insta's source file.
    #[test]
    fn a_relative_project_path_is_made_absolute() {
        let project = Project::open(Path::new("some/project")).expect("no images: built-ins");
        assert!(project.root.is_absolute(), "{}", project.root.display());
        assert!(project.root.ends_with("some/project"));
        assert!(project.snapshots_dir().is_absolute());
        assert!(project
            .with_artifacts(Path::new("out"))
            .artifacts
            .is_absolute());
    }

    #[test]
    fn scenarios_are_found_by_their_own_name_and_a_name_is_used_once() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let dir = tempfile::tempdir().expect("tempdir");
        let images = dir.path().join("images");
        std::fs::create_dir_all(images.join("kernels")).expect("mkdir");
        for file in [
            "bookworm.toml",
            "kernels/linode.toml",
            "kernels/linode.config",
        ] {
            std::fs::copy(root.join("images").join(file), images.join(file)).expect("copy");
        }
        let scenarios = dir.path().join("scenarios");
        std::fs::create_dir_all(&scenarios).expect("mkdir");
        let text = |name: &str| {
            format!("name = \"{name}\"\ndescription = \"d\"\n[matrix]\nreleases = [\"bookworm\"]\nkernels = [\"stock\"]\n")
        };
        std::fs::write(scenarios.join("file-name.toml"), text("inner-name")).expect("write");
        let project = Project::open(dir.path()).expect("opens");
        let found = project.scenario("inner-name").expect("found by its name");
        assert_eq!(found.path, scenarios.join("file-name.toml"));
        std::fs::write(scenarios.join("other.toml"), text("inner-name")).expect("write");
        let message = project.scenarios().expect_err("a name twice").to_string();
        assert!(
            message.contains("other.toml") && message.contains("file-name.toml"),
            "{message}"
        );
    }

    /// The project's own scenario files load, so a broken one fails the
    /// unit tests too, not only the VM suite.
    #[test]
    fn the_committed_scenarios_load_and_read_the_journal_portably() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let project = Project::open(&root).expect("the project opens");
        let scenarios = project.scenarios().expect("every scenario file loads");
        assert!(!scenarios.is_empty());
        for scenario in &scenarios {
            // jessie's journalctl (systemd 215) has no -t/--identifier=,
            // which came in 217 (systemd NEWS, "CHANGES WITH 217").
            for capture in &scenario.captures {
                let command = capture.command_text();
                let words: Vec<&str> = command.split_whitespace().collect();
                let identifier = words
                    .iter()
                    .any(|w| *w == "-t" || w.starts_with("--identifier"));
                assert!(
                    !(words.contains(&"journalctl") && identifier),
                    "{}: capture {:?} uses journalctl -t, which jessie lacks",
                    scenario.path.display(),
                    capture.name
                );
            }
        }
    }
}
