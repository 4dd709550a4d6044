//! One trial end to end, as both the test target and `vmrepro run` do it:
//! run the cell, write its Markdown report beside its artifacts, compare its
//! snapshot, and make (and save) its row of the outcome table. Also runs
//! many trials at once.

pub(crate) mod cell;
mod rescue;
#[cfg(test)]
mod stand;
mod steps;
mod trial;

pub use crate::check::outcome::{Outcome, Timings};
pub use crate::guest::warm::Start;
pub use cell::{
    bare_boot, exec, run_cell, shell, warm_state, BootTimes, ExecOutput, KeptGuest, RunError,
    RunOptions, StepFailure, StepProblem,
};

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::check::report::{self, Row};
use crate::check::snapshot::{self, SnapshotError};
use crate::check::verdict::{self, Ended, Status, Verdict};
use crate::host;
use crate::host::progress::Events;
use crate::project::{Cell, Project, Scenario};

/// What a trial produced.
pub struct Checked {
    /// The table row (also saved as `row.json` beside the artifacts).
    pub row: Row,
    /// The finished flow, or why it could not finish.
    pub outcome: Result<Outcome, RunError>,
    /// The snapshot comparison (`Ok` when the flow did not finish).
    pub snapshot: Result<(), SnapshotError>,
    /// The Markdown report (also saved as `report.md` beside the artifacts).
    pub report: String,
}

impl Checked {
    /// Whether the flow finished, every expectation held and the snapshot
    /// matched.
    pub fn passed(&self) -> bool {
        self.row.status.passed()
    }
}

/// Releases that must boot in this run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Required {
    /// Every release (`VMREPRO_REQUIRE_ALL=1`).
    pub all: bool,
    /// These releases (`VMREPRO_REQUIRE=bookworm,trixie`).
    pub releases: std::collections::BTreeSet<String>,
}

impl Required {
    /// Whether `release` must boot.
    pub fn contains(&self, release: &str) -> bool {
        self.all || self.releases.contains(release)
    }
}

/// Whether a release can be had here: in the cache already, or its archive
/// answers. Asked once per release and process, so a suite of many cells
/// of an unreachable release learns it within seconds.
pub fn reachable(
    project: &Project,
    cache: &crate::media::cache::Cache,
    release: &str,
) -> Result<(), String> {
    static PROBES: Mutex<BTreeMap<String, Result<(), String>>> = Mutex::new(BTreeMap::new());
    let recipe = project.recipe(release).map_err(|e| e.to_string())?;
    if crate::media::image::lookup(cache, recipe).is_some() {
        return Ok(());
    }
    let mut probes = PROBES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    probes
        .entry(release.to_owned())
        .or_insert_with(|| {
            // Why, in words; the callers say which release.
            crate::media::image::probe_reachable(recipe).map_err(|e| match e {
                crate::media::image::ImageError::Unreachable { reason, .. } => reason,
                other => other.to_string(),
            })
        })
        .clone()
}

/// Runs one scenario on one cell and checks it: the same verdict whether
/// `vmrepro repro`, `vmrepro run` or the test target asks. A release that
/// cannot be fetched is skipped within seconds (an error where the run
/// requires it) before anything is built.
pub fn check(project: &Project, scenario: &Scenario, cell: &Cell, options: &RunOptions) -> Checked {
    check_keeping(project, scenario, cell, options, false).0
}

/// [`check`], keeping the guest running when the trial fails (a step, a
/// capture, an expectation or the snapshot) and the guest still runs, for
/// a person to look into (`--shell-fail`). A trial that passes, is new, or
/// could not run keeps nothing.
pub fn check_keeping(
    project: &Project,
    scenario: &Scenario,
    cell: &Cell,
    options: &RunOptions,
    keep_failed: bool,
) -> (Checked, Option<cell::KeptGuest>) {
    let (outcome, kept) = match reachable(project, &options.cache, &cell.release) {
        Err(reason) => (
            Err(RunError::Image(
                crate::media::image::ImageError::Unreachable {
                    release: cell.release.clone(),
                    reason,
                },
            )),
            None,
        ),
        Ok(()) => cell::run_cell_keeping(project, scenario, cell, options, keep_failed),
    };
    let checked = judge(
        project,
        scenario,
        cell,
        options.required.contains(&cell.release),
        &host::qemu_version(),
        options.cache.events(),
        outcome,
    );
    // Only a failure is kept; anything else stops its guest here.
    let kept = kept.filter(|_| checked.row.status == Status::Fail);
    (checked, kept)
}

/// A trial's outcome (or why its flow could not finish) judged: the
/// snapshot compared, the verdict decided, the report and the row made,
/// and both written beside the artifacts (a folder that cannot take them
/// is said on `events`; the report travels in memory either way).
/// `required` says the cell's release must boot in this run; `qemu` is
/// QEMU's version, for the report.
fn judge(
    project: &Project,
    scenario: &Scenario,
    cell: &Cell,
    required: bool,
    qemu: &str,
    events: &Events,
    outcome: Result<Outcome, RunError>,
) -> Checked {
    let artifacts = project.artifacts_dir(&scenario.name, &cell.to_string());
    let (row, snapshot, report) = match &outcome {
        Ok(outcome) => {
            let snapshot = snapshot::compare_outcome(project, scenario, outcome);
            let row = Row::of(outcome, &snapshot);
            let report = report::markdown(scenario, outcome, &row, &snapshot, qemu);
            (row, snapshot, report)
        }
        Err(e) => {
            let first_line = e.to_string().lines().next().unwrap_or("").to_owned();
            let Verdict { status, text: why } = verdict::decide(Ended::Unfinished {
                why: e.unfinished(),
                message: e.unreachable().unwrap_or(&first_line),
                release: &cell.release,
                required,
            });
            // The report says what the row says: a required release that
            // cannot be fetched is an error there too, not a skip.
            let report = report::markdown_error(
                scenario,
                &cell.to_string(),
                status,
                e,
                e.captures_after_failure(),
                e.known(),
                qemu,
            );
            (
                Row::without_outcome(&scenario.name, cell, status, &why),
                Ok(()),
                report,
            )
        }
    };
    // The report travels in memory; the copy on disk is for later, and a
    // folder that cannot take it is said, not hidden.
    if let Err(e) = std::fs::create_dir_all(&artifacts)
        .and_then(|()| std::fs::write(artifacts.join("report.md"), &report))
    {
        events.note(
            &format!("{} {cell}", scenario.name),
            &format!(
                "could not write {}: {e}",
                artifacts.join("report.md").display()
            ),
        );
    }
    if let Err(e) = report::save_row(&artifacts, &row) {
        // The outcome table of a run is made from the saved rows.
        events.note(
            &format!("{} {cell}", scenario.name),
            &format!(
                "could not save this trial's row in {}, so the outcome table will lack it: {e}",
                artifacts.display()
            ),
        );
    }
    Checked {
        row,
        outcome,
        snapshot,
        report,
    }
}

/// Runs trials with at most `jobs` guests at once, each on a blocking thread
/// of its own; the cache is the only state they share, and it is locked.
/// Trials start longest-expected first; `done` sees each as it finishes,
/// and the results come back in the order of `cells`, each with what `done`
/// answered.
pub fn check_all<T: Send + 'static>(
    project: &Project,
    cells: Vec<(Scenario, Cell)>,
    options: &RunOptions,
    jobs: usize,
    done: fn(&Scenario, &Cell, &Checked) -> T,
) -> std::io::Result<Vec<(Checked, T)>> {
    let order = longest_first(&cells, &kernels_to_build(project, &options.cache));
    let (project, options) = (project.clone(), options.clone());
    schedule(
        cells,
        &order,
        jobs,
        move |scenario, cell| check(&project, scenario, cell, &options),
        done,
    )
}

/// Runs `trial` on each of `cells`, started in `order`, at most `jobs` at
/// once, each on a blocking thread of its own (a guest is driven
/// synchronously); `done` sees each as it finishes, and the results come
/// back in the order of `cells`.
fn schedule<T: Send + 'static>(
    cells: Vec<(Scenario, Cell)>,
    order: &[usize],
    jobs: usize,
    trial: impl Fn(&Scenario, &Cell) -> Checked + Send + Sync + 'static,
    done: fn(&Scenario, &Cell, &Checked) -> T,
) -> std::io::Result<Vec<(Checked, T)>> {
    let jobs = jobs.max(1);
    let trial = std::sync::Arc::new(trial);
    crate::host::process::block_on(async {
        let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(jobs));
        let mut handles = Vec::new();
        for (scenario, cell) in order.iter().map(|&i| cells[i].clone()) {
            let permit = permits
                .clone()
                .acquire_owned()
                .await
                .map_err(std::io::Error::other)?;
            let trial = trial.clone();
            handles.push(tokio::task::spawn_blocking(move || {
                let checked = trial(&scenario, &cell);
                let answer = done(&scenario, &cell, &checked);
                drop(permit);
                (checked, answer)
            }));
        }
        let mut results: Vec<Option<(Checked, T)>> = (0..order.len()).map(|_| None).collect();
        for (handle, &i) in handles.into_iter().zip(order) {
            results[i] = Some(handle.await.map_err(std::io::Error::other)?);
        }
        Ok(results.into_iter().flatten().collect())
    })
}

/// How many guests to run at once: one per core, but no more than the free
/// memory holds, counting each guest's memory and QEMU's own overhead.
pub fn default_jobs(memory_mib: u32) -> usize {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let available_mib = host::available_memory_mib().unwrap_or(u64::from(memory_mib) * 2);
    let by_memory = (available_mib / (u64::from(memory_mib) + 512)).max(1) as usize;
    cores.min(by_memory)
}

/// The kernel flavours built from a recipe that the cache does not have yet.
pub fn kernels_to_build(project: &Project, cache: &crate::media::cache::Cache) -> Vec<String> {
    project
        .kernels
        .iter()
        .filter_map(|(name, source)| match source {
            crate::project::recipe::KernelSource::Recipe(recipe) => {
                crate::media::kernel::lookup_built(cache, name, recipe)
                    .is_none()
                    .then(|| name.clone())
            }
            crate::project::recipe::KernelSource::Prebuilt { .. } => None,
        })
        .collect()
}

/// Indices of `cells` with the likely-longest trials first, so that the last
/// guest to start is not the one that keeps every other core idle at the
/// end: stock kernels (initrd, module loading) before the others, newer
/// releases (more units to start) before older ones. When a kernel still
/// has to be built (minutes; `to_build`), one of its cells goes first, so
/// that the build overlaps the other trials instead of running alone at the
/// end. The sort is stable.
pub fn longest_first(cells: &[(Scenario, Cell)], to_build: &[String]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..cells.len()).collect();
    order.sort_by_key(|&i| {
        let (scenario, cell) = &cells[i];
        let release = scenario
            .matrix
            .releases
            .iter()
            .position(|r| r == &cell.release)
            .unwrap_or(0);
        (!cell.kernel.is_stock(), std::cmp::Reverse(release))
    });
    for name in to_build.iter().rev() {
        if let Some(at) = order.iter().position(|&i| cells[i].1.kernel.name() == name) {
            let first = order.remove(at);
            order.insert(0, first);
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::project::{Expectations, FirstBoot, KernelFlavour, Matrix};

    fn cells() -> Vec<(Scenario, Cell)> {
        let scenario = Scenario {
            name: "s".into(),
            description: String::new(),
            path: "scenarios/s.toml".into(),
            matrix: Matrix {
                releases: vec!["bullseye".into(), "bookworm".into()],
                kernels: vec![KernelFlavour::named("linode"), KernelFlavour::stock()],
            },
            steps: Vec::new(),
            captures: Vec::new(),
            expect: Expectations::default(),
            expect_cells: Vec::new(),
            first_boot: FirstBoot::Warm,
            packages: Vec::new(),
            packages_line: None,
            versions: Vec::new(),
            disks: Vec::new(),
            evidence: Default::default(),
        };
        scenario
            .matrix
            .cells()
            .into_iter()
            .map(|c| (scenario.clone(), c))
            .collect()
    }

    fn names(cells: &[(Scenario, Cell)], order: &[usize]) -> Vec<String> {
        order.iter().map(|&i| cells[i].1.to_string()).collect()
    }

    #[test]
    fn stock_and_newer_cells_start_first() {
        let cells = cells();
        assert_eq!(
            names(&cells, &longest_first(&cells, &[])),
            [
                "bookworm-stock",
                "bullseye-stock",
                "bookworm-linode",
                "bullseye-linode"
            ]
        );
    }

    #[test]
    fn a_kernel_still_to_build_starts_at_once() {
        let cells = cells();
        assert_eq!(
            names(&cells, &longest_first(&cells, &["linode".to_owned()])),
            [
                "bookworm-linode",
                "bookworm-stock",
                "bullseye-stock",
                "bullseye-linode"
            ]
        );
    }

    /// A trial of the stand-in's scenario in a project at `dir`, judged.
    fn judged(
        dir: &std::path::Path,
        required: bool,
        outcome: impl FnOnce(&Scenario, &std::path::Path) -> Result<Outcome, RunError>,
    ) -> (Checked, Vec<String>, std::path::PathBuf) {
        let project = Project::open(dir).expect("project");
        let scenario =
            crate::run::stand::scenario(dir, "[[capture]]\nname = \"value\"\nrun = \"echo 17\"\n");
        let cell = scenario.matrix.cells()[0].clone();
        let artifacts = project.artifacts_dir(&scenario.name, &cell.to_string());
        let (notes, events) = crate::run::stand::Notes::events();
        let checked = judge(
            &project,
            &scenario,
            &cell,
            required,
            "QEMU emulator version 10.0.2",
            &events,
            outcome(&scenario, &artifacts),
        );
        (checked, notes.taken(), artifacts)
    }

    fn finished(scenario: &Scenario, artifacts: &std::path::Path) -> Result<Outcome, RunError> {
        let text = "17\n".to_owned();
        Ok(Outcome {
            captures: vec![crate::check::capture::Capture {
                name: "value".into(),
                command: "echo 17".into(),
                status: 0,
                raw: text.clone(),
                text,
                probe: None,
                normalize: Vec::new(),
            }],
            ..crate::run::stand::outcome(scenario, artifacts)
        })
    }

    #[test]
    fn a_release_that_cannot_be_fetched_is_skipped_unless_required() {
        let unreachable = |_: &Scenario, _: &std::path::Path| {
            Err(RunError::Image(
                crate::media::image::ImageError::Unreachable {
                    release: "bookworm".into(),
                    reason: "the archive does not answer".into(),
                },
            ))
        };
        let (_keep, dir) = crate::run::stand::dir();
        let (checked, notes, artifacts) = judged(&dir, false, unreachable);
        assert_eq!(checked.row.status, Status::Skipped);
        assert!(checked.snapshot.is_ok() && checked.outcome.is_err());
        let report = std::fs::read_to_string(artifacts.join("report.md")).expect("report.md");
        assert_eq!(report, checked.report);
        assert!(report.contains("the archive does not answer"), "{report}");
        assert_eq!(report::load_rows(&dir.join("target/vmrepro")).len(), 1);
        assert_eq!(notes, Vec::<String>::new());
        let (checked, _, _) = judged(&dir, true, unreachable);
        assert_eq!(checked.row.status, Status::Error);
        assert!(!checked.passed());
    }

    #[test]
    fn a_finished_trial_is_compared_with_its_snapshot() {
        let (_keep, dir) = crate::run::stand::dir();
        // None committed yet: new, never a pass.
        let (checked, _, _) = judged(&dir, false, finished);
        assert_eq!(checked.row.status, Status::New);
        assert!(matches!(checked.snapshot, Err(SnapshotError::New { .. })));
        // Committed and the same: a pass.
        let committed = dir.join("snapshots/x@bookworm-stock.snap");
        std::fs::create_dir_all(dir.join("snapshots")).expect("snapshots");
        std::fs::write(
            &committed,
            "---\nsource: x\n---\n== value (exit 0) ==\n17\n",
        )
        .expect("snap");
        let (checked, _, _) = judged(&dir, false, finished);
        assert_eq!(checked.row.status, Status::Pass, "{:?}", checked.snapshot);
        assert!(checked.passed());
        // Committed and different: a failure whose report shows the lines.
        std::fs::write(
            &committed,
            "---\nsource: x\n---\n== value (exit 0) ==\n16\n",
        )
        .expect("snap");
        let (checked, _, artifacts) = judged(&dir, false, finished);
        assert_eq!(checked.row.status, Status::Fail);
        let Err(SnapshotError::Differs { diff, .. }) = &checked.snapshot else {
            panic!("{:?}", checked.snapshot);
        };
        assert!(diff.contains("-16\n+17"), "{diff}");
        assert!(checked.report.contains("-16"), "{}", checked.report);
        assert_eq!(
            std::fs::read_to_string(artifacts.join("report.md")).expect("report.md"),
            checked.report
        );
        let _ = std::fs::remove_file(dir.join("snapshots/x@bookworm-stock.snap.new"));
    }

    #[test]
    fn a_report_that_cannot_be_written_is_said_and_still_returned() {
        let (_keep, dir) = crate::run::stand::dir();
        // A file where the artifacts' folder should be.
        std::fs::create_dir_all(dir.join("target/vmrepro/x")).expect("folder");
        std::fs::write(dir.join("target/vmrepro/x/bookworm-stock"), "").expect("file");
        let (checked, notes, _) = judged(&dir, false, finished);
        assert_eq!(checked.row.status, Status::New);
        assert!(checked.report.contains("17"), "{}", checked.report);
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].starts_with("could not write"), "{}", notes[0]);
        assert!(
            notes[1].contains("the outcome table will lack it"),
            "{}",
            notes[1]
        );
    }

    #[test]
    fn trials_start_in_order_at_most_jobs_at_once_and_come_back_in_theirs() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static RUNNING: AtomicUsize = AtomicUsize::new(0);
        static MOST: AtomicUsize = AtomicUsize::new(0);
        let cells = cells();
        let order = longest_first(&cells, &[]);
        let started = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let trial = |record: std::sync::Arc<std::sync::Mutex<Vec<String>>>| {
            move |scenario: &Scenario, cell: &Cell| {
                let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
                MOST.fetch_max(now, Ordering::SeqCst);
                record.lock().expect("record").push(cell.to_string());
                // Long enough for the others to start, if they could.
                std::thread::sleep(std::time::Duration::from_millis(30));
                RUNNING.fetch_sub(1, Ordering::SeqCst);
                Checked {
                    row: Row::without_outcome(&scenario.name, cell, Status::Pass, "pass"),
                    outcome: Err(RunError::Vm(crate::guest::vm::VmError::Spawn(
                        std::io::Error::other("not run"),
                    ))),
                    snapshot: Ok(()),
                    report: format!("report of {cell}"),
                }
            }
        };
        // One at a time: they start in the order given.
        let results = schedule(
            cells.clone(),
            &order,
            1,
            trial(started.clone()),
            |_, c, _| c.to_string(),
        )
        .expect("scheduled");
        assert_eq!(*started.lock().expect("started"), names(&cells, &order));
        assert_eq!(MOST.load(Ordering::SeqCst), 1);
        // Whatever the order they ran in, the results are in the cells'.
        let answers: Vec<&str> = results.iter().map(|(_, a)| a.as_str()).collect();
        let expected: Vec<String> = cells.iter().map(|(_, c)| c.to_string()).collect();
        assert_eq!(answers, expected);
        assert!(results
            .iter()
            .all(|(c, a)| c.report == format!("report of {a}")));
        // Two at a time: never more.
        MOST.store(0, Ordering::SeqCst);
        let results =
            schedule(cells.clone(), &order, 2, trial(started), |_, _, _| ()).expect("scheduled");
        assert_eq!(results.len(), 4);
        assert!(MOST.load(Ordering::SeqCst) <= 2);
    }

    #[test]
    fn a_kernel_the_cache_lacks_is_to_be_built() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let project = Project::open(&root).expect("the repository's project");
        let cache = tempfile::tempdir().expect("tempdir");
        let cache = crate::media::cache::Cache::at(cache.path());
        assert_eq!(kernels_to_build(&project, &cache), ["linode"]);
        let jobs = default_jobs(1024);
        assert!(jobs >= 1);
    }
}
