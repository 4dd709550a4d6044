//! The regression suite: one trial per scenario × matrix cell, each booting a
//! real guest and comparing its captures with the committed snapshot.
//!
//! Trial names are `SCENARIO::RELEASE::KERNEL`, so `cargo test -- bookworm`
//! selects a release. A release whose archive cannot be reached from here (and
//! that is not already in the image cache) is reported as ignored with the
//! reason. `VMREPRO_REQUIRE_ALL=1` turns that into a failure for every
//! release, `VMREPRO_REQUIRE=bookworm,trixie` for the releases named.

use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, OnceLock};

use libtest_mimic::{Arguments, Completion, Failed, Trial};
use vmrepro::image::{self, Cache};
use vmrepro::project::Project;
use vmrepro::run::{self, RunOptions};
use vmrepro::scenario::{Cell, Scenario};
use vmrepro::{host, report, snapshot, vm};

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new(env!("CARGO_MANIFEST_DIR")))
        .to_path_buf();
    // insta would otherwise ask `cargo metadata` for the workspace.
    std::env::set_var("INSTA_WORKSPACE_ROOT", &root);

    let trials = match Project::open(&root).and_then(|p| p.scenarios().map(|s| (p, s))) {
        Ok((project, scenarios)) => trials(Arc::new(project), scenarios),
        Err(e) => {
            let message = e.to_string();
            vec![Trial::test("scenario files", move || Err(message.into()))]
        }
    };
    libtest_mimic::run(&args, trials).exit_code()
}

fn trials(project: Arc<Project>, scenarios: Vec<Scenario>) -> Vec<Trial> {
    let shared = Arc::new(Shared::default());
    let mut trials = Vec::new();
    for scenario in scenarios {
        let scenario = Arc::new(scenario);
        for cell in scenario.matrix.cells() {
            let name = format!("{}::{}::{}", scenario.name, cell.release, cell.kernel);
            let (project, scenario, shared) = (project.clone(), scenario.clone(), shared.clone());
            trials.push(Trial::ignorable_test(name, move || {
                run_trial(&project, &scenario, &cell, &shared)
            }));
        }
    }
    trials
}

/// Work done once per test run, whichever trial needs it first.
#[derive(Default)]
struct Shared {
    host: OnceLock<Result<RunOptions, String>>,
    probes: Mutex<std::collections::BTreeMap<String, Result<(), String>>>,
}

impl Shared {
    fn options(&self) -> Result<RunOptions, String> {
        self.host
            .get_or_init(|| {
                host::ensure_tools().map_err(|e| e.to_string())?;
                let accel = vm::choose_accel().map_err(|e| e.to_string())?;
                eprintln!(
                    "vmrepro: accelerator {} ({})",
                    accel.accel.name(),
                    accel.reason
                );
                Ok(RunOptions {
                    cache: Cache::from_env(),
                    accel,
                    memory_mib: 1024,
                })
            })
            .clone()
    }

    /// Whether a release can be had: in the cache already, or its archive answers.
    fn reachable(
        &self,
        project: &Project,
        options: &RunOptions,
        release: &str,
    ) -> Result<(), String> {
        let Some(recipe) = project.recipes.get(release) else {
            return Err(format!("no recipe for {release}"));
        };
        if options.cache.lookup(recipe).is_some() {
            return Ok(());
        }
        let mut probes = self.probes.lock().map_err(|e| e.to_string())?;
        probes
            .entry(release.to_owned())
            .or_insert_with(|| image::probe_reachable(recipe).map_err(|e| e.to_string()))
            .clone()
    }
}

fn run_trial(
    project: &Project,
    scenario: &Scenario,
    cell: &Cell,
    shared: &Shared,
) -> Result<Completion, Failed> {
    let options = shared.options()?;
    if let Err(reason) = shared.reachable(project, &options, &cell.release) {
        if required(&cell.release) {
            return Err(format!("{} is required here and {reason}", cell.release).into());
        }
        return Ok(Completion::ignored_with(reason));
    }
    let outcome = run::run_cell(project, scenario, cell, &options).map_err(|e| {
        let report = report::markdown_error(scenario, &cell.to_string(), &e);
        Failed::from(report)
    })?;
    eprintln!(
        "vmrepro: {} on {}: first boot {:.1}s, trial {:.1}s",
        scenario.name, cell, outcome.first_boot_seconds, outcome.total_seconds
    );
    let compared = snapshot::compare_outcome(&project.snapshots_dir(), scenario, &outcome);
    let mut problems = Vec::new();
    if !outcome.passed() {
        problems.push(format!("verdict: {}", outcome.failures.join("; ")));
    }
    if let Err(e) = compared {
        problems.push(e.to_string());
    }
    if problems.is_empty() {
        Ok(Completion::Completed)
    } else {
        Err(problems.join("\n").into())
    }
}

/// Whether a release must really boot in this run (`VMREPRO_REQUIRE_ALL=1`,
/// or named in `VMREPRO_REQUIRE`), so that an unreachable archive fails the
/// trial instead of skipping it.
fn required(release: &str) -> bool {
    std::env::var("VMREPRO_REQUIRE_ALL").is_ok_and(|v| v == "1")
        || std::env::var("VMREPRO_REQUIRE")
            .is_ok_and(|list| list.split(',').any(|r| r.trim() == release))
}
