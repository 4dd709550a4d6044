//! Running one scenario on one matrix cell: image, guest, steps, captures,
//! expectations. The result is an [`Outcome`], which the snapshot and report
//! layers turn into a comparison or a Markdown report.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::check::capture::Capture;
use crate::check::outcome::{Outcome, StepRecord, Timings};
use crate::check::verdict::Unfinished;
use crate::guest::console::{Console, ConsoleError};
use crate::guest::vm::{AccelChoice, MachineOptions, Vm, VmConfig, VmDisk, VmError};
use crate::guest::warm::{self, Start, WarmError};
use crate::host::progress::Events;
use crate::media::cache::Cache;
use crate::media::image::{self, ImageError};
use crate::media::kernel::{self, KernelError};
use crate::project::recipe::KernelSource;
use crate::project::{Cell, FirstBoot, Project, Scenario, StepStatus};

use super::steps::{self, Flow, Ledger, Live};
use super::trial;

/// How long a boot (first or after a reboot) may take to reach a shell.
/// Generous because TCG on a busy 2-core machine can take a minute.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long systemd may take to finish starting up once the shell is there.
pub(super) const SETTLE_TIMEOUT: Duration = Duration::from_secs(180);

/// Options for a run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The image cache.
    pub cache: Cache,
    /// The accelerator.
    pub accel: AccelChoice,
    /// The virtual hardware.
    pub machine: MachineOptions,
    /// `Cold` boots every guest from power-on, even where the scenario
    /// allows a warm start (`--cold`, `VMREPRO_FIRST_BOOT=cold`).
    pub first_boot: FirstBoot,
    /// Releases that must boot: one whose archive cannot be reached is an
    /// error instead of a skip.
    pub required: crate::run::Required,
}

impl RunOptions {
    /// Options with the default machine and warm starts where allowed.
    pub fn new(cache: Cache, accel: AccelChoice) -> RunOptions {
        RunOptions {
            cache,
            accel,
            machine: MachineOptions::default(),
            first_boot: FirstBoot::Warm,
            required: crate::run::Required::default(),
        }
    }
}

impl RunError {
    /// Whose doing it was that the flow could not run to its end, for
    /// [`crate::check::verdict::decide`]: a guest that stopped answering or
    /// a step with the wrong exit status is the guest's; an image, kernel
    /// or QEMU that cannot be had is the host's; a release that cannot be
    /// fetched is nobody's here.
    pub fn unfinished(&self) -> Unfinished {
        match self {
            RunError::Stopped { cause, .. } => cause.unfinished(),
            RunError::Image(ImageError::Unreachable { .. }) => Unfinished::Unreachable,
            RunError::Project(_)
            | RunError::UnknownPackages { .. }
            | RunError::QemuEnded { .. }
            | RunError::Image(_)
            | RunError::Kernel(_)
            | RunError::Disk(_)
            | RunError::Vm(_)
            | RunError::Warm(_) => Unfinished::Host,
            RunError::Console(_) | RunError::Step { .. } => Unfinished::Guest,
        }
    }

    /// The captures taken after a failed step, from the guest it left.
    pub fn captures_after_failure(&self) -> Option<&Result<Vec<Capture>, String>> {
        match self {
            RunError::Step(failure) => Some(&failure.captures),
            RunError::Stopped { cause, .. } => cause.captures_after_failure(),
            _ => None,
        }
    }

    /// Why the cell's release cannot be fetched, when that is the error.
    pub fn unreachable(&self) -> Option<&str> {
        match self {
            RunError::Image(ImageError::Unreachable { reason, .. }) => Some(reason),
            RunError::Stopped { cause, .. } => cause.unreachable(),
            _ => None,
        }
    }

    /// What was known of the trial when its flow stopped on a booted guest:
    /// the environment, the command lines, the steps that ran and the time
    /// so far (no captures at the end, no expectations checked).
    pub fn known(&self) -> Option<&Outcome> {
        match self {
            RunError::Stopped { known, .. } => Some(known),
            _ => None,
        }
    }
}

/// Why a cell could not be run to the end.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The project has no recipe for the cell's release.
    #[error(transparent)]
    Project(#[from] crate::project::ProjectError),
    /// The image (or its release) is not available.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The kernel is not available.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// An extra disk could not be made.
    #[error(transparent)]
    Disk(#[from] crate::media::disk::DiskError),
    /// QEMU trouble.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The guest did not answer as expected.
    #[error(transparent)]
    Console(#[from] ConsoleError),
    /// The warm state could not be saved.
    #[error(transparent)]
    Warm(#[from] WarmError),
    /// QEMU ended while the guest was being driven: killed from outside,
    /// or crashed. Its exit status and last words say which.
    #[error("QEMU ended while {during}: {source}")]
    QemuEnded {
        /// What the harness was doing (the console's own error).
        during: String,
        /// QEMU's exit, with its output and the console tail.
        source: VmError,
    },
    /// The scenario asks for packages its release does not have.
    #[error("{}:{line}: key `packages`: {release}'s archive has no package {}", .file.display(), .packages.join(", "))]
    UnknownPackages {
        /// The scenario file.
        file: std::path::PathBuf,
        /// The line of its `packages`.
        line: usize,
        /// The release.
        release: String,
        /// The packages apt could not find.
        packages: Vec<String>,
    },
    /// A step failed; the flow ended there.
    #[error(transparent)]
    Step(Box<StepFailure>),
    /// The flow stopped on a booted guest (`cause`), with what was known of
    /// the trial by then, for its report.
    #[error("{cause}")]
    Stopped {
        /// Why it stopped.
        cause: Box<RunError>,
        /// The trial so far.
        known: Box<Outcome>,
    },
}

/// A step that failed, and the guest as it left it.
#[derive(Debug)]
pub struct StepFailure {
    /// 1-based step number.
    pub index: usize,
    /// The step's title.
    pub title: String,
    /// What went wrong.
    pub problem: StepProblem,
    /// The scenario's captures, taken after the failure from the same
    /// guest (or why they could not be).
    pub captures: Result<Vec<Capture>, String>,
}

/// How a step failed.
#[derive(Debug)]
pub enum StepProblem {
    /// It ended with an exit status this cell does not expect.
    Status {
        /// The status it ended with.
        got: i32,
        /// The status the scenario expects on this cell.
        expected: StepStatus,
        /// Its standard output.
        stdout: String,
        /// Its standard error.
        stderr: String,
    },
    /// It ran past its time limit and was stopped inside the guest.
    TimedOut {
        /// The limit.
        after: Duration,
        /// The last lines of its standard output.
        stdout: String,
        /// The last lines of its standard error.
        stderr: String,
    },
}

impl std::fmt::Display for StepFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (index, title) = (self.index, &self.title);
        let (stdout, stderr) = match &self.problem {
            StepProblem::Status {
                got,
                expected,
                stdout,
                stderr,
            } => {
                write!(
                    f,
                    "step {index} ({title}) exited {got}, expected {expected}"
                )?;
                (stdout, stderr)
            }
            StepProblem::TimedOut {
                after,
                stdout,
                stderr,
            } => {
                write!(
                    f,
                    "step {index} ({title}) was still running after its {}s limit and was stopped in the guest",
                    after.as_secs()
                )?;
                (stdout, stderr)
            }
        };
        write!(f, "\n--- stdout ---\n{}", with_newline(stdout))?;
        write!(f, "--- stderr ---\n{}", with_newline(stderr))
    }
}

impl std::error::Error for StepFailure {}

fn with_newline(text: &str) -> String {
    if text.is_empty() || text.ends_with('\n') {
        text.to_owned()
    } else {
        format!("{text}\n")
    }
}

/// A booted guest with a ready shell.
pub(super) struct Guest {
    pub(super) vm: Vm,
    /// Where driving the guest reports progress.
    pub(super) events: Events,
    pub(super) console: Console,
    pub(super) start: Start,
    /// How long preparing and starting it took (the other phases are
    /// filled in as the flow goes).
    pub(super) timings: Timings,
    pub(super) packages: BTreeMap<String, String>,
    pub(super) image_origin: String,
    /// `uname -r` in the guest, once a round of captures has read it.
    pub(super) kernel_release: Option<String>,
}

/// What a cell boots, built or found in the cache.
struct Bootable {
    config: VmConfig,
    packages: BTreeMap<String, String>,
    image_origin: String,
}

fn bootable(
    project: &Project,
    cell: &Cell,
    options: &RunOptions,
    artifacts: &std::path::Path,
    scenario: Option<&Scenario>,
) -> Result<Bootable, RunError> {
    let base = project.recipe(&cell.release)?;
    let forward_tcp = scenario.map(Scenario::probed_ports).unwrap_or_default();
    let recipe = match scenario {
        Some(s) if !s.packages.is_empty() => base.with_extra_packages(&s.packages),
        _ => base.clone(),
    };
    // A kernel built from a recipe does not depend on the image: when both
    // are missing they are built at the same time, the kernel (the longer)
    // started first.
    let (image, kernel) = std::thread::scope(|scope| {
        let name = cell.kernel.name();
        let building = match project.kernels.get(name) {
            Some(KernelSource::Recipe(recipe)) if !cell.kernel.is_stock() => {
                Some(scope.spawn(move || kernel::built(&options.cache, name, recipe)))
            }
            _ => None,
        };
        let image = image::image(&options.cache, &recipe);
        let built = building.map(|thread| {
            thread.join().unwrap_or_else(|_| {
                Err(KernelError::Other(
                    "the kernel build stopped unexpectedly".into(),
                ))
            })
        });
        (image, built)
    });
    let image = match image {
        Err(ImageError::UnknownPackages { release, packages }) => {
            return Err(RunError::UnknownPackages {
                file: scenario.map(|s| s.path.clone()).unwrap_or_default(),
                line: scenario.and_then(|s| s.packages_line).unwrap_or(1),
                release,
                packages,
            })
        }
        other => other?,
    };
    let kernel = match kernel {
        Some(built) => built?,
        None if cell.kernel.is_stock() => image.stock_kernel(),
        None => {
            let name = cell.kernel.name();
            match project.kernels.get(name) {
                Some(KernelSource::Prebuilt { image, initrd }) => {
                    kernel::prebuilt(name, image, initrd.as_deref())?
                }
                _ => {
                    return Err(crate::project::ProjectError::UnknownKernel {
                        name: name.to_owned(),
                        known: project.kernel_names().join(", "),
                    }
                    .into())
                }
            }
        }
    };
    let mut disks = Vec::new();
    for disk in scenario.map(|s| s.disks.as_slice()).unwrap_or_default() {
        disks.push(VmDisk {
            name: disk.name.clone(),
            base: crate::media::disk::disk(
                &options.cache,
                disk,
                &recipe.ext4_features,
                &format!("disk {}", disk.name),
            )?,
            keep_overlay: None,
        });
    }
    if artifacts.exists() {
        let _ = std::fs::remove_dir_all(artifacts);
    }
    Ok(Bootable {
        config: VmConfig {
            base_disk: image.disk.clone(),
            kernel,
            machine: options.machine.clone(),
            accel: options.accel.clone(),
            artifacts: artifacts.to_owned(),
            keep_overlay: None,
            resume_from: None,
            events: options.cache.events().clone(),
            forward_tcp,
            disks,
        },
        packages: image.manifest.packages.clone(),
        image_origin: image.manifest.origin.clone(),
    })
}

/// How long a cold boot took.
#[derive(Debug, Clone)]
pub struct BootTimes {
    /// Seconds from QEMU start until the shell answered.
    pub shell_seconds: f64,
    /// Seconds from QEMU start until systemd had finished starting up.
    pub settled_seconds: f64,
}

/// Boots from power-on until the shell is ready and systemd has settled.
fn cold_boot(
    config: &VmConfig,
    label: &str,
    accel: &str,
    timeout: Duration,
) -> Result<(Vm, Console, BootTimes), RunError> {
    config.events.note(
        label,
        &format!(
            "booting with kernel {} ({accel}; {})",
            config.kernel.release,
            config.machine.describe()
        ),
    );
    let vm = Vm::start(config)?;
    let mut console = Console::of_guest(vm.control()?, &vm)?;
    console.wait_ready("the first boot to reach a shell", timeout)?;
    let shell_seconds = vm.uptime().as_secs_f64();
    let system_state = console.wait_settled("systemd to finish the first boot", SETTLE_TIMEOUT)?;
    let settled_seconds = vm.uptime().as_secs_f64();
    config.events.note(
        label,
        &format!(
            "shell after {shell_seconds:.1}s, system {system_state} after {settled_seconds:.1}s"
        ),
    );
    Ok((
        vm,
        console,
        BootTimes {
            shell_seconds,
            settled_seconds,
        },
    ))
}

/// Boots a cell from power-on, waits for its shell and for systemd to
/// settle, and stops it: the bare boot that benchmarks compare trials with.
/// `timeout` bounds the wait for the shell.
pub fn bare_boot(
    project: &Project,
    cell: &Cell,
    options: &RunOptions,
    timeout: Duration,
) -> Result<BootTimes, RunError> {
    let label = format!("boot {cell}");
    let artifacts = project.artifacts_dir("bare-boot", &cell.to_string());
    let bootable = bootable(project, cell, options, &artifacts, None)?;
    let (vm, _console, times) = cold_boot(
        &bootable.config,
        &label,
        options.accel.accel.name(),
        timeout,
    )?;
    vm.stop();
    Ok(times)
}

/// The saved state a warm start of `cell` resumes (for `scenario`, whose
/// packages and probed ports give it an image and a network card of its
/// own), booted and saved first if the cache has none.
pub fn warm_state(
    project: &Project,
    scenario: Option<&Scenario>,
    cell: &Cell,
    options: &RunOptions,
) -> Result<warm::WarmState, RunError> {
    let artifacts = project.artifacts_dir("warm-state", &cell.to_string());
    let bootable = bootable(project, cell, options, &artifacts, scenario)?;
    Ok(warm::get_or_save(
        &options.cache,
        &warm_name(cell, scenario, &bootable.config),
        &bootable.config,
        BOOT_TIMEOUT,
        &format!("warm state {cell}"),
    )?)
}

/// The name a saved state goes by in the cache. The key covers the disk and
/// the network card either way; the name says so too, for people reading
/// the cache.
fn warm_name(cell: &Cell, scenario: Option<&Scenario>, config: &VmConfig) -> String {
    let mut name = cell.to_string();
    if scenario.is_some_and(|s| !s.packages.is_empty()) {
        name.push_str("+packages");
    }
    if !config.forward_tcp.is_empty() {
        name.push_str("-net");
    }
    name
}

/// Builds or finds what the cell boots, then starts the guest: resumed from
/// the saved state unless `first_boot` or the options ask for a real boot.
/// Returns once the guest's shell is ready and systemd has settled.
fn boot(
    project: &Project,
    cell: &Cell,
    options: &RunOptions,
    scenario: Option<&Scenario>,
    label: &str,
    artifacts: &std::path::Path,
) -> Result<Guest, RunError> {
    let began = Instant::now();
    let first_boot = scenario.map(|s| s.first_boot).unwrap_or_default();
    let Bootable {
        config,
        packages,
        image_origin,
    } = bootable(project, cell, options, artifacts, scenario)?;
    let mut start = Start::Cold;
    let mut starting: Option<Instant> = None;
    if first_boot == FirstBoot::Warm && options.first_boot == FirstBoot::Warm {
        let name = warm_name(cell, scenario, &config);
        let saved = warm::get_or_save(&options.cache, &name, &config, BOOT_TIMEOUT, label)?;
        config
            .events
            .note(label, &format!("resuming the saved state {}", saved.key));
        let resuming = Instant::now();
        starting = Some(resuming);
        match warm::resume(&saved, &config, BOOT_TIMEOUT) {
            Ok(resumed) => {
                config.events.note(
                    label,
                    &format!("shell after {:.1}s (resumed)", resumed.seconds),
                );
                let caught = resumed.caught_up.describe();
                if !caught.is_empty() {
                    config.events.note(
                        label,
                        &format!("{caught} ({:.1}s)", resumed.catch_up_seconds),
                    );
                }
                return Ok(Guest {
                    vm: resumed.vm,
                    events: config.events.clone(),
                    console: resumed.console,
                    start: Start::Warm {
                        key: saved.key,
                        caught_up: resumed.caught_up,
                    },
                    timings: Timings {
                        prepare: (resuming - began).as_secs_f64(),
                        start: resuming.elapsed().as_secs_f64() - resumed.catch_up_seconds,
                        start_settle: resumed.catch_up_seconds,
                        ..Timings::default()
                    },
                    packages,
                    image_origin,
                    kernel_release: None,
                });
            }
            Err(e) => {
                // The message and QEMU's own words, without the console tail.
                let text = e.to_string();
                let reason = text
                    .lines()
                    .take_while(|l| !l.starts_with("---"))
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ");
                config
                    .events
                    .note(label, &format!("{reason}; booting cold instead"));
                start = Start::ColdAfterWarmFailed { reason };
                let _ = std::fs::remove_dir_all(artifacts);
            }
        }
    }
    // A saved state that would not resume counts as starting time.
    let starting = starting.unwrap_or_else(Instant::now);
    let (vm, console, times) = cold_boot(&config, label, options.accel.accel.name(), BOOT_TIMEOUT)?;
    let settle = times.settled_seconds - times.shell_seconds;
    Ok(Guest {
        vm,
        events: config.events.clone(),
        console,
        start,
        timings: Timings {
            prepare: (starting - began).as_secs_f64(),
            start: starting.elapsed().as_secs_f64() - settle,
            start_settle: settle,
            ..Timings::default()
        },
        packages,
        image_origin,
        kernel_release: None,
    })
}

impl Guest {
    /// The guest as the step interpreter sees it, and where it reports.
    fn parts<'a>(&'a mut self, label: &'a str) -> (Live<'a>, Ledger<'a>) {
        (
            Live {
                console: &mut self.console,
                vm: &mut self.vm,
            },
            Ledger {
                events: &self.events,
                label,
                timings: &mut self.timings,
                kernel_release: &mut self.kernel_release,
            },
        )
    }

    /// Runs a scenario's steps (see [`steps::run`]).
    fn run_steps(
        &mut self,
        scenario: &Scenario,
        cell: &Cell,
        label: &str,
        records: &mut Vec<StepRecord>,
    ) -> Result<Flow, RunError> {
        let (mut live, mut ledger) = self.parts(label);
        steps::run(&mut live, &mut ledger, scenario, cell, records)
    }

    /// The error to report for one that came from driving the guest (see
    /// [`trial::explain`]).
    fn explain(&mut self, error: RunError) -> RunError {
        let (mut live, _) = self.parts("");
        trial::explain(&mut live, error)
    }
}

/// Runs a scenario on one cell.
pub fn run_cell(
    project: &Project,
    scenario: &Scenario,
    cell: &Cell,
    options: &RunOptions,
) -> Result<Outcome, RunError> {
    run_cell_keeping(project, scenario, cell, options, false).0
}

/// A guest kept running after its trial, for a person to look into: the
/// state the flow left, failed step, captures and all. Dropping it stops
/// the guest.
pub struct KeptGuest {
    guest: Guest,
    cell: Cell,
}

impl KeptGuest {
    /// Hands the guest's root shell to `interact`, as [`shell`] does; the
    /// guest is stopped when `interact` returns.
    pub fn shell(
        self,
        interact: impl FnOnce(std::os::unix::net::UnixStream) -> std::io::Result<()>,
    ) -> Result<(), RunError> {
        interactive_shell(self.guest, &self.cell, interact)
    }
}

/// Runs a scenario on one cell and, when `keep` is set and the guest is
/// still running at the end (whatever the flow did), keeps it instead of
/// stopping it.
pub(crate) fn run_cell_keeping(
    project: &Project,
    scenario: &Scenario,
    cell: &Cell,
    options: &RunOptions,
    keep: bool,
) -> (Result<Outcome, RunError>, Option<KeptGuest>) {
    let started = Instant::now();
    let label = format!("{} {}", scenario.name, cell);
    let artifacts = project.artifacts_dir(&scenario.name, &cell.to_string());
    let mut guest = match boot(project, cell, options, Some(scenario), &label, &artifacts) {
        Ok(guest) => guest,
        Err(e) => return (Err(e), None),
    };
    // What is known of the trial before its flow; the flow adds the rest.
    let base = Outcome {
        setup: guest.vm.setup().clone(),
        packages: guest.packages.clone(),
        image_origin: guest.image_origin.clone(),
        start: guest.start.clone(),
        ..Outcome::before_the_flow(scenario, cell, options.accel.clone(), artifacts)
    };
    let result = {
        let (mut live, mut ledger) = guest.parts(&label);
        trial::run(&mut live, &mut ledger, scenario, base, started)
    };
    let kept = |mut guest: Guest| {
        (keep && guest.vm.check_running().is_ok()).then(|| KeptGuest {
            guest,
            cell: cell.clone(),
        })
    };
    let mut outcome = match result {
        Ok(outcome) => outcome,
        Err(e) => return (Err(e), kept(guest)),
    };
    // Stopping the guest (unless it is kept) is the trial's last phase.
    let stopping = Instant::now();
    let kept = kept(guest);
    outcome.timings.stop = stopping.elapsed().as_secs_f64();
    outcome.timings.total = started.elapsed().as_secs_f64();
    options.cache.events().finish(
        &label,
        &format!(
            "done in {:.1}s ({:.1}s of it the harness's own)",
            outcome.timings.total,
            outcome.timings.harness()
        ),
    );
    (Ok(outcome), kept)
}

/// What a command run by [`exec`] printed and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Standard output (lossily decoded as UTF-8).
    pub stdout: String,
    /// Standard error (lossily decoded as UTF-8).
    pub stderr: String,
    /// Exit status.
    pub status: i32,
}

/// Boots a cell (warm where the scenario allows), optionally runs a
/// scenario's steps, runs one command as root and stops the guest. One
/// word is a shell command line (`"dmesg | tail"`); several are a command
/// and its arguments, each passed as it is. A command still running after
/// `timeout` is stopped inside the guest and is an error.
pub fn exec(
    project: &Project,
    scenario: Option<&Scenario>,
    cell: &Cell,
    options: &RunOptions,
    command: &[String],
    timeout: Duration,
) -> Result<ExecOutput, RunError> {
    let command = match command {
        [line] => line.clone(),
        words => words
            .iter()
            .map(|w| crate::text::shell_quote(w))
            .collect::<Vec<_>>()
            .join(" "),
    };
    let (mut guest, label) = boot_after(project, scenario, cell, options, "exec")?;
    guest.events.note(&label, "running the command");
    let out = match guest.console.run("the command", &command, timeout) {
        Ok(out) => out,
        Err(e) => return Err(guest.explain(e.into())),
    };
    guest.vm.stop();
    options.cache.events().finish(&label, "done");
    Ok(ExecOutput {
        stdout: out.stdout,
        stderr: out.stderr,
        status: out.status,
    })
}

/// Boots a cell, optionally runs a scenario's steps (reboots included), and
/// hands the guest's root shell to `interact`. The guest is stopped when
/// `interact` returns, whatever happened.
pub fn shell(
    project: &Project,
    scenario: Option<&Scenario>,
    cell: &Cell,
    options: &RunOptions,
    interact: impl FnOnce(std::os::unix::net::UnixStream) -> std::io::Result<()>,
) -> Result<(), RunError> {
    let (guest, _) = boot_after(project, scenario, cell, options, "shell")?;
    interactive_shell(guest, cell, interact)
}

/// Boots a cell for a person (`shell`, `exec`; `kind` names the artifacts
/// folder) and runs a scenario's steps first if one is given. As a trial
/// does, a release that cannot be fetched is said at once, not after a
/// bootstrap that cannot succeed. Returns the guest and its progress label.
fn boot_after(
    project: &Project,
    scenario: Option<&Scenario>,
    cell: &Cell,
    options: &RunOptions,
    kind: &str,
) -> Result<(Guest, String), RunError> {
    crate::run::reachable(project, &options.cache, &cell.release).map_err(|reason| {
        ImageError::Unreachable {
            release: cell.release.clone(),
            reason,
        }
    })?;
    let name = scenario.map(|s| s.name.as_str()).unwrap_or(kind);
    let label = format!("{name} {cell}");
    let artifacts = project.artifacts_dir(&format!("{kind}-{name}"), &cell.to_string());
    let mut guest = boot(project, cell, options, scenario, &label, &artifacts)?;
    if let Some(scenario) = scenario {
        if let Err(e) = guest.run_steps(scenario, cell, &label, &mut Vec::new()) {
            return Err(guest.explain(e));
        }
    }
    Ok((guest, label))
}

/// Turns a guest's control shell into an interactive one for `interact`,
/// and stops the guest when it returns.
fn interactive_shell(
    guest: Guest,
    cell: &Cell,
    interact: impl FnOnce(std::os::unix::net::UnixStream) -> std::io::Result<()>,
) -> Result<(), RunError> {
    let (rows, cols) = crate::host::progress::terminal_size();
    let Guest { vm, console, .. } = guest;
    let stream = console.into_interactive(&format!("[vmrepro {cell}] \\w# "), rows, cols)?;
    let result = interact(stream);
    vm.stop();
    result.map_err(|e| {
        RunError::Console(ConsoleError::Io {
            what: "the interactive shell".into(),
            message: e.to_string(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::cache::Cache;
    use crate::project::KernelFlavour;
    use crate::run::stand::{dir, outcome, scenario};

    fn failure(problem: StepProblem) -> StepFailure {
        StepFailure {
            index: 2,
            title: "restart the service".into(),
            problem,
            captures: Ok(Vec::new()),
        }
    }

    #[test]
    fn a_failed_step_says_what_it_printed_each_stream_on_its_own_lines() {
        let status = failure(StepProblem::Status {
            got: 3,
            expected: StepStatus::Exactly(0),
            stdout: "out".into(),
            stderr: String::new(),
        });
        assert_eq!(
            status.to_string(),
            "step 2 (restart the service) exited 3, expected 0\n--- stdout ---\nout\n--- stderr ---\n"
        );
        let late = failure(StepProblem::TimedOut {
            after: Duration::from_secs(5),
            stdout: String::new(),
            stderr: "waiting\n".into(),
        });
        assert_eq!(
            late.to_string(),
            "step 2 (restart the service) was still running after its 5s limit and was stopped in the guest\n--- stdout ---\n--- stderr ---\nwaiting\n"
        );
    }

    #[test]
    fn whose_doing_an_unfinished_flow_was() {
        let unreachable = || {
            RunError::Image(ImageError::Unreachable {
                release: "jessie".into(),
                reason: "archive.debian.org does not resolve".into(),
            })
        };
        assert_eq!(unreachable().unfinished(), Unfinished::Unreachable);
        assert_eq!(
            unreachable().unreachable(),
            Some("archive.debian.org does not resolve")
        );
        let qemu = RunError::Vm(VmError::Spawn(std::io::Error::other("no QEMU")));
        assert_eq!(qemu.unfinished(), Unfinished::Host);
        assert!(qemu.unreachable().is_none() && qemu.known().is_none());
        let step = RunError::Step(Box::new(failure(StepProblem::Status {
            got: 1,
            expected: StepStatus::Exactly(0),
            stdout: String::new(),
            stderr: String::new(),
        })));
        assert_eq!(step.unfinished(), Unfinished::Guest);
        assert!(step.captures_after_failure().is_some());
        // A flow stopped on a booted guest is judged by its cause, and
        // keeps what was known of the trial.
        let (_keep, dir) = dir();
        let scenario = scenario(&dir, "");
        let stopped = |cause| RunError::Stopped {
            cause: Box::new(cause),
            known: Box::new(outcome(&scenario, &dir)),
        };
        let stopped_step = stopped(step);
        assert_eq!(stopped_step.unfinished(), Unfinished::Guest);
        assert!(stopped_step.captures_after_failure().is_some());
        assert!(stopped_step.known().is_some());
        assert_eq!(
            stopped_step.to_string().lines().next(),
            Some("step 2 (restart the service) exited 1, expected 0")
        );
        let stopped_unreachable = stopped(unreachable());
        assert_eq!(stopped_unreachable.unfinished(), Unfinished::Unreachable);
        assert!(stopped_unreachable.unreachable().is_some());
        assert!(stopped_unreachable.captures_after_failure().is_none());
    }

    #[test]
    fn a_saved_state_s_name_says_what_it_was_saved_with() {
        let (_keep, dir) = dir();
        let cell = Cell {
            release: "bookworm".into(),
            kernel: KernelFlavour::stock(),
        };
        let plain = scenario(&dir, "");
        let packages = scenario(&dir, "packages = [\"procps\"]\n");
        let config = |forward_tcp: Vec<u16>| VmConfig {
            forward_tcp,
            ..VmConfig::for_tests(&dir)
        };
        assert_eq!(
            warm_name(&cell, None, &config(Vec::new())),
            "bookworm-stock"
        );
        assert_eq!(
            warm_name(&cell, Some(&plain), &config(Vec::new())),
            "bookworm-stock"
        );
        assert_eq!(
            warm_name(&cell, Some(&packages), &config(vec![8080])),
            "bookworm-stock+packages-net"
        );
    }

    /// A project at `dir` whose bookworm image is already in a cache there
    /// (files of one byte), and run options over that cache.
    fn cached_bookworm(dir: &std::path::Path) -> (Project, RunOptions) {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let project = Project::open(&root)
            .expect("the repository's project")
            .with_artifacts(&dir.join("artifacts"));
        let cache = Cache::at(dir.join("cache"));
        let recipe = project.recipe("bookworm").expect("bookworm").clone();
        let seeded: Result<_, crate::media::cache::CacheError> = cache.get_or_build(
            image::KIND,
            &image::key(&recipe),
            "seeding",
            |dir: &std::path::Path| {
                for file in ["rootfs.qcow2", "vmlinuz", "initrd.img"] {
                    std::fs::write(dir.join(file), b"x").expect("file");
                }
                Ok(image::Manifest {
                    hash: recipe.hash(),
                    stock_kernel_release: "6.1.0-40-amd64".into(),
                    build_seconds: 1.0,
                    packages: BTreeMap::from([("systemd".into(), "252.39-1".into())]),
                    origin: "mmdebstrap".into(),
                })
            },
        );
        seeded.expect("seeded");
        let accel = AccelChoice {
            accel: crate::guest::vm::Accel::Tcg,
            reason: "test".into(),
        };
        (project, RunOptions::new(cache, accel))
    }

    #[test]
    fn what_a_cell_boots_is_found_in_the_cache() {
        let (_keep, dir) = dir();
        let (project, options) = cached_bookworm(&dir);
        let scenario = scenario(&dir, "[[capture]]\nname = \"web\"\nprobe_tcp = 8080\n");
        let cell = Cell {
            release: "bookworm".into(),
            kernel: KernelFlavour::stock(),
        };
        let artifacts = dir.join("artifacts/x/bookworm-stock");
        std::fs::create_dir_all(&artifacts).expect("artifacts");
        std::fs::write(artifacts.join("console.log"), "an earlier run").expect("old");
        let found = bootable(&project, &cell, &options, &artifacts, Some(&scenario))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(found.config.kernel.release, "6.1.0-40-amd64");
        assert!(found.config.kernel.initrd.is_some());
        assert!(found.config.base_disk.ends_with("rootfs.qcow2"));
        assert_eq!(found.config.forward_tcp, [8080]);
        assert_eq!(found.packages["systemd"], "252.39-1");
        assert_eq!(found.image_origin, "mmdebstrap");
        assert!(
            !artifacts.exists(),
            "an earlier run's artifacts are not mixed with this one's"
        );
        assert_eq!(
            warm_name(&cell, Some(&scenario), &found.config),
            "bookworm-stock-net"
        );

        // A release or a kernel the project has no recipe for.
        let unknown = Cell {
            release: "sid".into(),
            kernel: KernelFlavour::stock(),
        };
        let err = bootable(&project, &unknown, &options, &artifacts, None).err();
        assert!(matches!(err, Some(RunError::Project(_))), "{err:?}");
        let unknown = Cell {
            release: "bookworm".into(),
            kernel: KernelFlavour::named("custom"),
        };
        let err = bootable(&project, &unknown, &options, &artifacts, None).err();
        assert!(
            err.as_ref()
                .is_some_and(|e| e.to_string().contains("custom")),
            "{err:?}"
        );
    }
}
