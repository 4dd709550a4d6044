//! vmrepro turns "my machine breaks after a reboot" bug reports into VM-based
//! regression tests.
//!
//! One folder per layer, and data flows one way through them:
//!
//! - `spec`: what the project's files say: scenarios (model, parser,
//!   sharding) and the project that holds them;
//! - `build`: what a trial boots, built once and cached: release images and
//!   the Linode-style kernel;
//! - `guest`: one running guest: QEMU and its monitor, the root shell on the
//!   control port, saved booted states;
//! - `check`: what a trial came to: captures, the verdict, the snapshot
//!   comparison, the report and the table rows;
//! - `run`: one scenario on one cell through all of the above, and many
//!   cells at once;
//! - `host`: the machine the harness runs on (host tools, supervised
//!   processes, progress events), which every layer may use.
//!
//! No layer prints its progress: each emits events to the `Events` handle it
//! is given (through the cache and the run options), and the caller chooses
//! the reporter: live or plain lines on a terminal, or none.
//!
//! The layers are private. What the command line, the test targets and the
//! benchmark need is re-exported below, grouped by what it is for.

#![warn(missing_docs)]
#![deny(unsafe_code)]

mod build;
mod check;
mod guest;
mod host;
mod run;
mod spec;
mod text;

pub mod settings;

/// Scenario files and their matrices.
pub mod scenario {
    pub use crate::spec::{trials_of, Cell, FirstBoot, KernelFlavour, Known, Scenario, Shard};
}

/// The project directory: scenarios, release recipes, snapshots.
pub mod project {
    pub use crate::spec::project::{Project, ProjectError};
}

/// The cache of built images, kernels and saved guest states.
pub mod cache {
    pub use crate::build::cache::{Cache, EntryInfo};
}

/// Recipes of release images and kernels.
pub mod recipe {
    pub use crate::spec::recipe::{ImageRecipe, KernelRecipe, KernelSource, RecipeError};
}

/// Release images.
pub mod image {
    pub use crate::build::image::{
        image, import, key, lookup, probe_reachable, Image, ImageError, Manifest, KIND,
    };
}

/// The Linode-style kernel.
pub mod kernel {
    pub use crate::build::kernel::{built, key, lookup_built, prebuilt, Kernel, KernelError, KIND};
}

/// Saved, booted guest states.
pub mod warm {
    pub use crate::guest::warm::KIND;
}

/// The virtual machine: accelerator and virtual hardware.
pub mod vm {
    pub use crate::guest::vm::{
        choose_accel, Accel, AccelChoice, AccelWanted, Firmware, MachineOptions, VmError,
    };
}

/// Trials: one scenario on one cell, checked; many at once; the pieces the
/// benchmark times on their own.
pub mod trial {
    pub use crate::check::outcome::{Outcome, Timings};
    pub use crate::guest::warm::Start;
    pub use crate::run::cell::{
        bare_boot, exec, run_cell, shell, warm_state, BootTimes, ExecOutput, KeptGuest, RunError,
        RunOptions, StepFailure, StepProblem,
    };
    pub use crate::run::{
        check, check_all, check_keeping, default_jobs, kernels_to_build, longest_first, reachable,
        Checked, Required,
    };
}

/// Verdicts and exit statuses.
pub mod verdict {
    pub use crate::check::verdict::{
        decide, exit_code, Ended, Status, Unfinished, Verdict, EXIT_ENV, EXIT_FAIL, EXIT_PASS,
        EXIT_SKIPPED, EXIT_USAGE,
    };
}

/// Snapshots: rendering captures and comparing them with the committed ones.
pub mod snapshot {
    pub use crate::check::snapshot::{accept, compare, pending, render, Meta, SnapshotError};
}

/// The outcome table's rows, the tables and the Markdown report.
pub mod report {
    pub use crate::check::report::{
        load_rows, markdown_error, markdown_table, save_row, sort_rows, table, Row,
    };
}

/// The host: the tools vmrepro needs and installs.
pub mod tools {
    pub use crate::host::{
        available_memory_mib, ensure_tools, find_command, package_version, qemu_version,
        tool_version, HostError, InstallPlan, TOOLS,
    };
}

/// Progress: the events the layers emit, and the terminal that renders them.
pub mod progress {
    pub use crate::host::progress::{terminal_size, Event, Events, Reporter, Terminal};
}

#[cfg(test)]
mod layering {
    //! The layers' one-way flow, checked: a layer may use the layers below
    //! it, never one above.

    use std::path::Path;

    /// Each layer and what it may use besides itself and `text`.
    const BELOW: &[(&str, &[&str])] = &[
        ("host", &[]),
        ("spec", &[]),
        ("build", &["spec", "host"]),
        ("guest", &["build", "spec", "host"]),
        ("check", &["guest", "build", "spec", "host"]),
        ("run", &["check", "guest", "build", "spec", "host"]),
    ];

    fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn no_layer_uses_one_above_it() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut wrong = Vec::new();
        for (layer, below) in BELOW {
            let mut files = Vec::new();
            sources(&src.join(layer), &mut files);
            assert!(!files.is_empty(), "no sources in src/{layer}");
            for file in files {
                let text = std::fs::read_to_string(&file).unwrap_or_default();
                for (other, _) in BELOW {
                    let used = text.contains(&format!("crate::{other}::"))
                        || text.contains(&format!("crate::{other};"));
                    if used && other != layer && !below.contains(other) {
                        wrong.push(format!("{} uses crate::{other}", file.display()));
                    }
                }
            }
        }
        assert!(wrong.is_empty(), "upward uses:\n{}", wrong.join("\n"));
        // Nothing below the settings uses them: each layer is given its part.
        let mut files = Vec::new();
        for (layer, _) in BELOW {
            sources(&src.join(layer), &mut files);
        }
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            assert!(
                !text.contains("crate::settings"),
                "{} uses the settings",
                file.display()
            );
        }
    }

    /// The README's architecture section names every file under `src/`,
    /// and only those.
    #[test]
    fn the_architecture_section_lists_every_file() {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let readme = std::fs::read_to_string(manifest.join("../README.md")).expect("README.md");
        let section = readme
            .split_once("### Architecture")
            .and_then(|(_, rest)| rest.split_once("```\nharness/src/\n"))
            .and_then(|(_, rest)| rest.split_once("```"))
            .map(|(block, _)| block)
            .expect("the architecture block in README.md");
        let mut listed = std::collections::BTreeSet::new();
        let mut folder = String::new();
        for line in section.lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            let indent = line.len() - line.trim_start().len();
            if name.ends_with('/') && indent == 2 {
                folder = name.to_owned();
            } else if indent == 2 {
                folder.clear();
                listed.insert(name.to_owned());
            } else if indent == 4 {
                listed.insert(format!("{folder}{name}"));
            }
        }
        let src = manifest.join("src");
        let mut present = std::collections::BTreeSet::new();
        for entry in std::fs::read_dir(&src).expect("src").flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.path().is_dir() {
                for inner in std::fs::read_dir(entry.path()).expect("folder").flatten() {
                    present.insert(format!("{name}/{}", inner.file_name().to_string_lossy()));
                }
            } else {
                present.insert(name);
            }
        }
        let missing: Vec<_> = present.difference(&listed).collect();
        let gone: Vec<_> = listed.difference(&present).collect();
        assert!(
            missing.is_empty() && gone.is_empty(),
            "README's architecture section lacks {missing:?} and lists {gone:?}, which do not exist"
        );
    }

    #[test]
    fn the_environment_is_read_in_one_module() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        // The settings read it; `PATH` is where host commands are found.
        // (Spelt in pieces, so that this test does not find itself.)
        let env = concat!("env", "::");
        let allowed = [
            ("settings.rs", format!("{env}vars_os()")),
            ("host/mod.rs", format!("{env}var_os(\"PATH\")")),
        ];
        let calls = [
            "var(",
            "var_os(",
            "vars",
            concat!("set", "_var("),
            "remove_var(",
        ]
        .map(|c| format!("{env}{c}"));
        let mut wrong = Vec::new();
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            let name = file.strip_prefix(&src).unwrap_or(file).to_string_lossy();
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or_default();
                let reads = calls.iter().any(|call| code.contains(call.as_str()));
                let fine = allowed
                    .iter()
                    .any(|(f, call)| name == *f && code.contains(call.as_str()));
                if reads && !fine {
                    wrong.push(format!("{name}:{}: {}", n + 1, line.trim()));
                }
            }
        }
        assert!(
            wrong.is_empty(),
            "the environment read outside the settings:\n{}",
            wrong.join("\n")
        );
    }
}
