//! The regression suite: one trial per scenario × matrix cell, each booting a
//! real guest and comparing its captures with the committed snapshot.
//!
//! Trial names are `SCENARIO::RELEASE::KERNEL`, so `cargo test -- bookworm`
//! selects a release. `VMREPRO_SHARD=K/N` runs the K-th of N shares of the
//! trials (1-based), for splitting the suite across machines. A release whose archive cannot be reached from here (and
//! that is not already in the image cache) is reported as ignored with the
//! reason. `VMREPRO_REQUIRE_ALL=1` turns that into a failure for every
//! release, `VMREPRO_REQUIRE=bookworm,trixie` for the releases named.

use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, OnceLock};

use libtest_mimic::{Arguments, Completion, Failed, Trial};
use vmrepro::cache::Cache;
use vmrepro::image;
use vmrepro::project::Project;
use vmrepro::run::RunOptions;
use vmrepro::scenario::{Cell, Scenario, Shard};
use vmrepro::vm::MachineOptions;
use vmrepro::{host, report, trial, vm};

fn main() -> ExitCode {
    let mut args = Arguments::from_args();
    // As many guests at once as cores and free memory allow, as `vmrepro run`.
    args.test_threads
        .get_or_insert_with(|| trial::default_jobs(MachineOptions::default().memory_mib));
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new(env!("CARGO_MANIFEST_DIR")))
        .to_path_buf();
    // insta would otherwise ask `cargo metadata` for the workspace.
    std::env::set_var("INSTA_WORKSPACE_ROOT", &root);

    let shared = Arc::new(Shared::default());
    let trials = match Project::open(&root).and_then(|p| p.scenarios().map(|s| (p, s))) {
        Ok((project, scenarios)) => match trials(Arc::new(project), scenarios, &shared) {
            Ok(trials) => trials,
            Err(message) => vec![Trial::test("VMREPRO_SHARD", move || Err(message.into()))],
        },
        Err(e) => {
            let message = e.to_string();
            vec![Trial::test("scenario files", move || Err(message.into()))]
        }
    };
    let conclusion = libtest_mimic::run(&args, trials);
    if let Ok(mut rows) = shared.rows.lock() {
        if !rows.is_empty() {
            report::sort_rows(&mut rows);
            let table = report::table(&rows);
            println!("\nOutcome table (release × kernel × scenario):\n\n{table}");
            // On GitHub Actions the table also goes to the job summary.
            if let Some(summary) = std::env::var_os("GITHUB_STEP_SUMMARY") {
                use std::io::Write as _;
                if let Ok(mut file) = std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(summary)
                {
                    let _ = writeln!(file, "### vmrepro outcome table\n\n```\n{table}```");
                }
            }
        }
    }
    conclusion.exit_code()
}

/// One trial per scenario × cell, of this run's shard, likely-longest first
/// (as `vmrepro run` orders them), so that two guests stay busy to the end.
fn trials(
    project: Arc<Project>,
    scenarios: Vec<Scenario>,
    shared: &Arc<Shared>,
) -> Result<Vec<Trial>, String> {
    let cells: Vec<(Scenario, Cell)> = scenarios
        .into_iter()
        .flat_map(|s| s.matrix.cells().into_iter().map(move |c| (s.clone(), c)))
        .collect();
    let cells = shard(cells)?;
    let built =
        vmrepro::kernel::lookup_linode(&Cache::from_env(), &project.linode_kernel).is_some();
    let order = trial::longest_first(&cells, built);
    Ok(order
        .into_iter()
        .map(|i| {
            let (scenario, cell) = cells[i].clone();
            let name = format!("{}::{}::{}", scenario.name, cell.release, cell.kernel);
            let (project, shared) = (project.clone(), shared.clone());
            Trial::ignorable_test(name, move || run_trial(&project, &scenario, &cell, &shared))
        })
        .collect())
}

/// Work done once per test run, whichever trial needs it first.
#[derive(Default)]
struct Shared {
    host: OnceLock<Result<RunOptions, String>>,
    probes: Mutex<std::collections::BTreeMap<String, Result<(), String>>>,
    rows: Mutex<Vec<report::Row>>,
}

impl Shared {
    /// Keeps a trial's row for the table at the end.
    fn keep(&self, row: report::Row) {
        if let Ok(mut rows) = self.rows.lock() {
            rows.push(row);
        }
    }

    /// Keeps the row of a trial that did not run, and saves it beside the
    /// cell's artifacts as a run would.
    fn record(&self, project: &Project, scenario: &Scenario, cell: &Cell, row: report::Row) {
        report::save_row(
            &project.artifacts_dir(&scenario.name, &cell.to_string()),
            &row,
        );
        self.keep(row);
    }

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
                RunOptions::new(Cache::from_env(), accel).with_first_boot_from_env()
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
        if image::lookup(&options.cache, recipe).is_some() {
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
            shared.record(
                project,
                scenario,
                cell,
                report::Row::without_outcome(&scenario.name, cell, format!("ERROR: {reason}")),
            );
            return Err(format!("{} is required here and {reason}", cell.release).into());
        }
        shared.record(
            project,
            scenario,
            cell,
            report::Row::without_outcome(&scenario.name, cell, format!("skipped: {reason}")),
        );
        return Ok(Completion::ignored_with(reason));
    }
    let checked = trial::check(project, scenario, cell, &options);
    shared.keep(checked.row.clone());
    let outcome = checked
        .outcome
        .map_err(|e| Failed::from(report::markdown_error(scenario, &cell.to_string(), &e)))?;
    eprintln!(
        "vmrepro: {} on {}: first boot {} {:.1}s, trial {:.1}s",
        scenario.name,
        cell,
        outcome.start.describe(),
        outcome.first_boot_seconds,
        outcome.total_seconds
    );
    let compared = checked.snapshot;
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

/// Keeps the trials of shard K of N (`VMREPRO_SHARD=K/N`), in the stable
/// order of scenario files and matrices.
fn shard<T>(items: Vec<T>) -> Result<Vec<T>, String> {
    let Ok(spec) = std::env::var("VMREPRO_SHARD") else {
        return Ok(items);
    };
    let shard = Shard::parse(&spec).map_err(|e| format!("VMREPRO_SHARD={e}"))?;
    Ok(items
        .into_iter()
        .enumerate()
        .filter(|(i, _)| shard.holds(*i))
        .map(|(_, t)| t)
        .collect())
}
