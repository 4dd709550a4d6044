//! What a run is told from outside the project, as one value.
//!
//! The binary builds it from the environment and lets its flags win; the
//! test target and the benchmark build it from the environment alone. It is
//! built once, before any guest starts, and its parts are handed down: the
//! cache, the project, the run options. This is the only module that reads
//! the process environment (other than `PATH`, through which host commands
//! are found, and insta's own variables, which insta reads itself), so one
//! set of accepted values holds for every way in.
//!
//! Settings are about this machine and this run; what a scenario means
//! never depends on them (a mirror or the accelerator changes how fast a
//! guest boots, not what it is).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

pub use crate::guest::vm::AccelWanted;
use crate::guest::vm::{choose_accel, AccelChoice, VmError};
use crate::media::cache::Cache;
use crate::project::{FirstBoot, Project, ProjectError, Shard};
use crate::run::cell::RunOptions;
pub use crate::run::Required;

/// Everything the environment (or the command line) says about a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The project directory (`VMREPRO_ROOT`, `--project`); else the first
    /// directory at or above the working directory that has `scenarios/`.
    pub project: Option<PathBuf>,
    /// Where artifacts go, relative to the project (`VMREPRO_ARTIFACTS`);
    /// else `target/vmrepro`.
    pub artifacts: Option<PathBuf>,
    /// The cache of images, kernels and saved states (`VMREPRO_CACHE`,
    /// `--cache`; else `$XDG_CACHE_HOME/vmrepro`, else `~/.cache/vmrepro`).
    pub cache: PathBuf,
    /// The Debian mirror (or apt proxy) every release bootstraps from
    /// (`VMREPRO_MIRROR`), unless the release has its own below.
    pub mirror: Option<String>,
    /// Mirrors by release (`VMREPRO_MIRROR_<RELEASE>`), by lower-case name.
    pub release_mirrors: BTreeMap<String, String>,
    /// The accelerator asked for (`VMREPRO_ACCEL`, `--accel`).
    pub accel: AccelWanted,
    /// How guests reach their first shell (`VMREPRO_FIRST_BOOT`,
    /// `--first-boot`, `--cold`).
    pub first_boot: FirstBoot,
    /// Releases that must really boot: an archive that cannot be reached
    /// is then an error, not a skip (`VMREPRO_REQUIRE`, `VMREPRO_REQUIRE_ALL`).
    pub required: Required,
    /// Whether host packages may be installed when missing (they may,
    /// unless `VMREPRO_NO_INSTALL` or `--no-install` says otherwise; it
    /// also takes root and apt-get).
    pub install: bool,
    /// The share of the cells this run takes (`VMREPRO_SHARD=K/N`, `--shard`).
    pub shard: Option<Shard>,
    /// `NO_COLOR` is set (to anything but the empty string): no colours
    /// unless asked for (no-color.org).
    pub no_color: bool,
    /// `CLICOLOR_FORCE` is set to anything but `0`: colours even off a
    /// terminal (bixense.com/clicolors).
    pub clicolor_force: bool,
    /// insta is told to print nothing (`INSTA_OUTPUT=none`). insta reads
    /// its output mode only from its own variable (or an `insta.yaml` in
    /// the project, which is the user's); the command line, whose standard
    /// output is the report, starts itself again with it set when it is not.
    pub insta_quiet: bool,
}

/// A variable whose value is not one of those accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}={value:?}: {accepted}")]
pub struct SettingsError {
    /// The variable.
    pub variable: String,
    /// Its value, as set.
    pub value: String,
    /// What it accepts.
    pub accepted: String,
}

/// The values a yes-or-no variable accepts, the same as the flags'.
const YES: &[&str] = &["1", "true", "yes", "on", "y", "t"];
const NO: &[&str] = &["", "0", "false", "no", "off", "n", "f"];

impl Settings {
    /// The settings this process's environment gives.
    pub fn from_env() -> Result<Settings, SettingsError> {
        Settings::from_vars(std::env::vars_os())
    }

    /// The settings a set of variables gives: every other variable is
    /// ignored, and a variable set to the empty string counts as unset.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Result<Settings, SettingsError> {
        let vars: BTreeMap<String, OsString> = vars
            .into_iter()
            .filter_map(|(name, value)| Some((name.into_string().ok()?, value)))
            .collect();
        // Paths may be any bytes; everything else must be text.
        let path = |name: &str| vars.get(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        let text = |name: &str| -> Result<Option<String>, SettingsError> {
            match vars.get(name) {
                None => Ok(None),
                Some(value) => value
                    .clone()
                    .into_string()
                    .map(|s| Some(s.trim().to_owned()).filter(|s| !s.is_empty()))
                    .map_err(|value| SettingsError {
                        variable: name.to_owned(),
                        value: value.to_string_lossy().into_owned(),
                        accepted: "not valid UTF-8".into(),
                    }),
            }
        };
        let invalid = |name: &str, value: &str, accepted: &str| SettingsError {
            variable: name.to_owned(),
            value: value.to_owned(),
            accepted: accepted.to_owned(),
        };
        let flag = |name: &str| -> Result<bool, SettingsError> {
            match text(name)? {
                None => Ok(false),
                Some(v) if YES.contains(&v.to_lowercase().as_str()) => Ok(true),
                Some(v) if NO.contains(&v.to_lowercase().as_str()) => Ok(false),
                Some(v) => Err(invalid(
                    name,
                    &v,
                    "use 1 or 0 (or true/false, yes/no, on/off)",
                )),
            }
        };

        let accel = match text("VMREPRO_ACCEL")? {
            None => AccelWanted::Auto,
            Some(v) => AccelWanted::parse(&v)
                .ok_or_else(|| invalid("VMREPRO_ACCEL", &v, "use auto, kvm or tcg"))?,
        };
        let first_boot = match text("VMREPRO_FIRST_BOOT")?.as_deref() {
            None | Some("warm") => FirstBoot::Warm,
            Some("cold") => FirstBoot::Cold,
            Some(v) => return Err(invalid("VMREPRO_FIRST_BOOT", v, "use warm or cold")),
        };
        let shard = match text("VMREPRO_SHARD")? {
            None => None,
            Some(v) => Some(Shard::parse(&v).map_err(|why| SettingsError {
                variable: "VMREPRO_SHARD".into(),
                value: v.clone(),
                accepted: why,
            })?),
        };
        let mut release_mirrors = BTreeMap::new();
        for name in vars.keys() {
            if let Some(release) = name.strip_prefix("VMREPRO_MIRROR_") {
                if let Some(mirror) = text(name)? {
                    release_mirrors.insert(release.to_lowercase(), mirror);
                }
            }
        }
        let cache = path("VMREPRO_CACHE")
            .or_else(|| path("XDG_CACHE_HOME").map(|d| d.join("vmrepro")))
            .or_else(|| path("HOME").map(|h| h.join(".cache/vmrepro")))
            .unwrap_or_else(|| std::env::temp_dir().join("vmrepro-cache"));
        Ok(Settings {
            project: path("VMREPRO_ROOT"),
            artifacts: path("VMREPRO_ARTIFACTS"),
            cache,
            mirror: text("VMREPRO_MIRROR")?,
            release_mirrors,
            accel,
            first_boot,
            required: Required {
                all: flag("VMREPRO_REQUIRE_ALL")?,
                releases: text("VMREPRO_REQUIRE")?
                    .unwrap_or_default()
                    .split(',')
                    .map(str::trim)
                    .filter(|r| !r.is_empty())
                    .map(str::to_owned)
                    .collect(),
            },
            install: !flag("VMREPRO_NO_INSTALL")?,
            shard,
            no_color: vars.get("NO_COLOR").is_some_and(|v| !v.is_empty()),
            clicolor_force: vars
                .get("CLICOLOR_FORCE")
                .is_some_and(|v| !v.is_empty() && v != "0"),
            insta_quiet: vars.get("INSTA_OUTPUT").is_some_and(|v| v == "none"),
        })
    }

    /// The cache these settings name, its builds allowed to install host
    /// packages if the settings allow it.
    pub fn cache(&self) -> Cache {
        Cache::at(self.cache.clone()).allowing_install(self.install)
    }

    /// The accelerator: the one asked for, or with `auto` the best here.
    pub fn accel(&self) -> Result<AccelChoice, VmError> {
        choose_accel(self.accel)
    }

    /// Run options over `cache` and `accel`, with the first boot and the
    /// releases that must boot from these settings.
    pub fn run_options(&self, cache: Cache, accel: AccelChoice) -> RunOptions {
        RunOptions {
            first_boot: self.first_boot,
            required: self.required.clone(),
            ..RunOptions::new(cache, accel)
        }
    }

    /// The project: the one named, else the one found at or above `start`;
    /// with the artifacts folder and mirrors these settings give.
    pub fn project(&self, start: &Path) -> Result<Project, ProjectError> {
        let project = match &self.project {
            Some(root) => Project::open(root)?,
            None => Project::discover(start)?,
        };
        Ok(self.apply(project))
    }

    /// The project at `root` with these settings' artifacts and mirrors.
    pub fn project_at(&self, root: &Path) -> Result<Project, ProjectError> {
        Ok(self.apply(Project::open(root)?))
    }

    fn apply(&self, mut project: Project) -> Project {
        if let Some(artifacts) = &self.artifacts {
            project = project.with_artifacts(artifacts);
        }
        project.with_mirrors(self.mirror.as_deref(), &self.release_mirrors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        Settings::from_vars(
            vars.iter()
                .map(|(n, v)| (OsString::from(n), OsString::from(v))),
        )
    }

    #[test]
    fn nothing_set_means_the_defaults() {
        let s = settings(&[("HOME", "/home/u"), ("PATH", "/bin")]).expect("valid");
        assert_eq!(s.cache, PathBuf::from("/home/u/.cache/vmrepro"));
        assert_eq!(s.accel, AccelWanted::Auto);
        assert_eq!(s.first_boot, FirstBoot::Warm);
        assert!(s.install);
        assert!(!s.required.contains("bookworm"));
        assert_eq!(
            (s.project, s.artifacts, s.mirror, s.shard),
            (None, None, None, None)
        );
        assert!(s.release_mirrors.is_empty());
    }

    #[test]
    fn every_variable_is_read() {
        let s = settings(&[
            ("HOME", "/home/u"),
            ("XDG_CACHE_HOME", "/xdg"),
            ("VMREPRO_ROOT", "/p"),
            ("VMREPRO_ARTIFACTS", "target/cold"),
            ("VMREPRO_MIRROR", "http://proxy:3142/debian"),
            ("VMREPRO_MIRROR_JESSIE", "http://archive.example/debian"),
            ("VMREPRO_ACCEL", "TCG"),
            ("VMREPRO_FIRST_BOOT", "cold"),
            ("VMREPRO_REQUIRE", "bookworm, trixie,"),
            ("VMREPRO_NO_INSTALL", "1"),
            ("VMREPRO_SHARD", "2/3"),
        ])
        .expect("valid");
        assert_eq!(s.cache, PathBuf::from("/xdg/vmrepro"));
        assert_eq!(s.project, Some(PathBuf::from("/p")));
        assert_eq!(s.artifacts, Some(PathBuf::from("target/cold")));
        assert_eq!(s.mirror.as_deref(), Some("http://proxy:3142/debian"));
        assert_eq!(
            s.release_mirrors.get("jessie").map(String::as_str),
            Some("http://archive.example/debian")
        );
        assert_eq!(s.accel, AccelWanted::Tcg);
        assert_eq!(s.first_boot, FirstBoot::Cold);
        assert!(s.required.contains("trixie") && !s.required.contains("bullseye"));
        assert!(!s.install);
        assert!(s.shard.is_some());
        let s = settings(&[("VMREPRO_CACHE", "/c"), ("XDG_CACHE_HOME", "/xdg")]).expect("valid");
        assert_eq!(s.cache, PathBuf::from("/c"));
        let all =
            settings(&[("VMREPRO_REQUIRE_ALL", "yes"), ("VMREPRO_ACCEL", "auto")]).expect("valid");
        assert!(all.required.contains("jessie"));
        assert_eq!(all.accel, AccelWanted::Auto);
    }

    #[test]
    fn empty_means_unset() {
        let s = settings(&[
            ("VMREPRO_ACCEL", ""),
            ("VMREPRO_FIRST_BOOT", ""),
            ("VMREPRO_NO_INSTALL", ""),
            ("VMREPRO_MIRROR", " "),
            ("VMREPRO_MIRROR_BOOKWORM", ""),
            ("VMREPRO_CACHE", ""),
            ("HOME", "/h"),
        ])
        .expect("valid");
        assert_eq!(s.accel, AccelWanted::Auto);
        assert!(s.install);
        assert_eq!(s.mirror, None);
        assert!(s.release_mirrors.is_empty());
        assert_eq!(s.cache, PathBuf::from("/h/.cache/vmrepro"));
    }

    #[test]
    fn a_value_not_accepted_is_named_with_what_is() {
        for (name, value, accepted) in [
            ("VMREPRO_ACCEL", "hvf", "auto, kvm or tcg"),
            ("VMREPRO_FIRST_BOOT", "tepid", "warm or cold"),
            ("VMREPRO_NO_INSTALL", "please", "1 or 0"),
            ("VMREPRO_REQUIRE_ALL", "2", "1 or 0"),
            ("VMREPRO_SHARD", "4/3", "K/N"),
        ] {
            let e = settings(&[(name, value)]).expect_err(name);
            assert_eq!(e.variable, name);
            let text = e.to_string();
            assert!(
                text.starts_with(&format!("{name}={value:?}: ")) && text.contains(accepted),
                "{text}"
            );
        }
    }
}
