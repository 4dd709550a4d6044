//! The regression suite: one trial per scenario × matrix cell, each booting a
//! real guest and comparing its captures with the committed snapshot.
//!
//! Trial names are `SCENARIO::RELEASE::KERNEL`, so `cargo test -- bookworm`
//! selects a release. `VMREPRO_SHARD=K/N` runs the K-th of N shares of the
//! trials (1-based), for splitting the suite across machines.
//!
//! A release whose archive cannot be reached from here (and that is not
//! already in the image cache) is found out when the trials are listed, and
//! its trials are listed as ignored, so cargo test and cargo-nextest alike
//! show them as skipped; `VMREPRO_REQUIRE_ALL=1`, or
//! `VMREPRO_REQUIRE=bookworm,trixie` for the releases named, makes them run
//! and fail instead.
//!
//! A scenario file that does not load fails the whole run before any filter
//! is applied. `VMREPRO_REQUIRE_TRIALS=1` makes a run whose filter selected
//! no trial fail (a CI cell must never go green having tested nothing).
//! `VMREPRO_RECORD=1` reports a cell without a committed snapshot (NEW) as
//! ignored instead of failed, for a run whose purpose is to record them.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, OnceLock};

use libtest_mimic::{Arguments, Completion, Failed, Trial};
use vmrepro::check::report;
use vmrepro::check::verdict::Status;
use vmrepro::guest::vm::MachineOptions;
use vmrepro::host::{
    self,
    progress::{Events, Terminal},
};
use vmrepro::project::{Cell, Project, Scenario};
use vmrepro::run::{self, RunOptions};
use vmrepro::settings::Settings;

fn main() -> ExitCode {
    let mut args = Arguments::from_args();
    // As many guests at once as cores and free memory allow, as `vmrepro run`.
    args.test_threads
        .get_or_insert_with(|| run::default_jobs(MachineOptions::default().memory_mib));
    // The settings, read once from the environment as `vmrepro` reads them.
    let settings = match Settings::from_env() {
        Ok(settings) => Arc::new(settings),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let root = settings.project.clone().unwrap_or_else(|| {
        let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        manifest.parent().map(PathBuf::from).unwrap_or(manifest)
    });
    // insta would otherwise ask `cargo metadata` for the workspace.
    std::env::set_var("INSTA_WORKSPACE_ROOT", &root);

    // Loading errors end the run here, before any filter could hide them.
    let loaded = settings
        .project_at(&root)
        .and_then(|p| p.scenarios().map(|s| (p, s)))
        .map_err(|e| e.to_string())
        .map(|(project, scenarios)| {
            let cells = vmrepro::project::trials_of(&scenarios);
            let cells = match settings.shard {
                Some(shard) => shard.select(cells),
                None => cells,
            };
            (project, cells)
        });
    let (project, cells) = match loaded {
        Ok(loaded) => loaded,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::FAILURE;
        }
    };
    let project = Arc::new(project);
    let shared = Arc::new(Shared {
        settings,
        host: OnceLock::new(),
        rows: Mutex::default(),
    });
    let trials = trials(&project, cells, &shared, &args);
    let listing = args.list;
    let conclusion = libtest_mimic::run(&args, trials);
    if listing {
        return conclusion.exit_code();
    }
    let ran = conclusion.num_passed + conclusion.num_failed + conclusion.num_ignored;
    if ran == 0 && std::env::var("VMREPRO_REQUIRE_TRIALS").is_ok_and(|v| v == "1") {
        eprintln!(
            "error: the filter selected no trial ({} filtered out) and VMREPRO_REQUIRE_TRIALS=1",
            conclusion.num_filtered_out
        );
        return ExitCode::FAILURE;
    }
    print_table(&shared);
    conclusion.exit_code()
}

/// The outcome table of this run. Under cargo-nextest every trial is a
/// process of its own, so no process has the whole table: it says where to
/// get it instead.
fn print_table(shared: &Shared) {
    if std::env::var_os("NEXTEST_RUN_ID").is_some() {
        return;
    }
    if let Ok(mut rows) = shared.rows.lock() {
        if !rows.is_empty() {
            report::sort_rows(&mut rows);
            println!(
                "\nOutcome table (release × kernel × scenario):\n\n{}",
                report::table(&rows)
            );
        }
    }
}

/// One trial per scenario × cell, likely-longest first (as `vmrepro run`
/// orders them), so that two guests stay busy to the end. Trials of a
/// release that cannot be fetched here are listed as ignored, and when this
/// process runs trials (not only lists them) their rows are recorded as
/// skipped, for the trials the filter selects.
fn trials(
    project: &Arc<Project>,
    cells: Vec<(Scenario, Cell)>,
    shared: &Arc<Shared>,
    args: &Arguments,
) -> Vec<Trial> {
    let cache = shared.settings.cache();
    let order = run::longest_first(&cells, &run::kernels_to_build(project, &cache));
    let mut said = std::collections::BTreeSet::new();
    order
        .into_iter()
        .map(|i| {
            let (scenario, cell) = cells[i].clone();
            let name = format!("{}::{}::{}", scenario.name, cell.release, cell.kernel);
            let skip = if shared.settings.required.contains(&cell.release) {
                None
            } else {
                run::reachable(project, &cache, &cell.release).err()
            };
            let trial = {
                let (project, shared, scenario, cell) = (
                    project.clone(),
                    shared.clone(),
                    scenario.clone(),
                    cell.clone(),
                );
                Trial::ignorable_test(name, move || run_trial(&project, &scenario, &cell, &shared))
                    .with_ignored_flag(skip.is_some())
            };
            if let Some(reason) = &skip {
                if !args.list && !args.is_filtered_out(&trial) {
                    if said.insert(cell.release.clone()) {
                        eprintln!("vmrepro: skipping the {} trials: {reason}", cell.release);
                    }
                    shared.skipped(project, &scenario, &cell, reason);
                }
            }
            trial
        })
        .collect()
}

/// Work done once per test run, whichever trial needs it first.
struct Shared {
    settings: Arc<Settings>,
    host: OnceLock<Result<RunOptions, String>>,
    rows: Mutex<Vec<report::Row>>,
}

impl Shared {
    /// Keeps a trial's row for the table at the end.
    fn keep(&self, row: report::Row) {
        if let Ok(mut rows) = self.rows.lock() {
            rows.push(row);
        }
    }

    /// Keeps the row of a trial skipped because its release cannot be
    /// fetched, and saves it beside the cell's artifacts as a run would.
    fn skipped(&self, project: &Project, scenario: &Scenario, cell: &Cell, reason: &str) {
        let row = report::Row::without_outcome(&scenario.name, cell, Status::Skipped, reason);
        let artifacts = project.artifacts_dir(&scenario.name, &cell.to_string());
        if let Err(e) = report::save_row(&artifacts, &row) {
            eprintln!(
                "vmrepro: could not save the row of {} {cell} in {}: {e}",
                scenario.name,
                artifacts.display()
            );
        }
        self.keep(row);
    }

    fn options(&self) -> Result<RunOptions, String> {
        self.host
            .get_or_init(|| {
                let events = Events::new(Arc::new(Terminal::new(false, false)));
                let settings = &self.settings;
                host::ensure_tools(&events, settings.install).map_err(|e| e.to_string())?;
                let accel = settings.accel().map_err(|e| e.to_string())?;
                eprintln!(
                    "vmrepro: accelerator {} ({})",
                    accel.accel.name(),
                    accel.reason
                );
                // Progress as plain lines, in the test output.
                Ok(settings.run_options(settings.cache().with_events(events), accel))
            })
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
    let checked = run::check(project, scenario, cell, &options);
    shared.keep(checked.row.clone());
    let status = checked.row.status;
    let outcome = match &checked.outcome {
        Ok(outcome) => outcome,
        // Run although it was listed as ignored (`--ignored`): under
        // nextest an ignored completion would read as a pass, so it fails.
        Err(e) if status == Status::Skipped && std::env::var_os("NEXTEST_RUN_ID").is_some() => {
            return Err(format!("skipped: {e}").into());
        }
        Err(e) if status == Status::Skipped => {
            return Ok(Completion::ignored_with(e.to_string()));
        }
        Err(_) => return Err(Failed::from(checked.report.clone())),
    };
    let t = &outcome.timings;
    eprintln!(
        "vmrepro: {} on {}: {} ({} in {:.1}s; trial {:.1}s: reboots {:.1}s to a shell + {:.1}s settling, captures {:.1}s, steps {:.1}s, the harness's own {:.1}s; {})",
        scenario.name,
        cell,
        status,
        outcome.start.describe(),
        t.start + t.start_settle,
        t.total,
        t.reboot_to_shell,
        t.reboot_settle,
        t.captures_before + t.captures_after,
        t.steps,
        t.harness(),
        outcome.accel.accel.name(),
    );
    match status {
        Status::Pass | Status::Reproduced => Ok(Completion::Completed),
        Status::New if std::env::var("VMREPRO_RECORD").is_ok_and(|v| v == "1") => {
            Ok(Completion::ignored_with(checked.row.verdict.clone()))
        }
        _ => {
            let mut problems = Vec::new();
            if !outcome.passed() {
                problems.push(format!("verdict: {}", outcome.failures.join("; ")));
            }
            if let Err(e) = &checked.snapshot {
                problems.push(e.to_string());
            }
            Err(problems.join("\n").into())
        }
    }
}
