//! Running one scenario on one matrix cell: image, guest, steps, captures,
//! expectations. The result is an [`Outcome`], which the snapshot and report
//! layers turn into a comparison or a Markdown report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::cache::Cache;
use crate::capture::{self, Capture, GuestFacts};
use crate::console::{CommandOutput, Console, ConsoleError};
use crate::image::{self, ImageError};
use crate::kernel::{self, KernelError};
use crate::progress;
use crate::project::Project;
use crate::scenario::{Action, Cell, Expectations, KernelFlavour, Scenario};
use crate::vm::{self, AccelChoice, Vm, VmConfig, VmError};

/// How long a boot (first or after a reboot) may take to reach a shell.
/// Generous because TCG on a busy 2-core machine can take a minute.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long systemd may take to finish starting up once the shell is there.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(180);

/// Options for a run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The image cache.
    pub cache: Cache,
    /// The accelerator.
    pub accel: AccelChoice,
    /// Guest memory in MiB.
    pub memory_mib: u32,
}

/// Why a cell could not be run to the end.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The image (or its release) is not available.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The kernel is not available.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// QEMU trouble.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The guest did not answer as expected.
    #[error(transparent)]
    Console(#[from] ConsoleError),
    /// A step ended with the wrong exit status.
    #[error("step {index} ({title}) exited {got}, expected {expected}\n--- stdout ---\n{stdout}--- stderr ---\n{stderr}")]
    Step {
        /// 1-based step number.
        index: usize,
        /// The step's title.
        title: String,
        /// The status it ended with.
        got: i32,
        /// The status the scenario expects.
        expected: i32,
        /// Its standard output.
        stdout: String,
        /// Its standard error.
        stderr: String,
    },
}

/// What one step did.
#[derive(Debug, Clone)]
pub struct StepRecord {
    /// The step's title.
    pub title: String,
    /// The step's action.
    pub action: Action,
    /// What the guest answered (none for a reboot).
    pub output: Option<CommandOutput>,
    /// Wall time.
    pub seconds: f64,
}

/// A capture that read differently before the last reboot and after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The capture's name.
    pub name: String,
    /// Lines present before the reboot and gone after it.
    pub lost: Vec<String>,
    /// Lines present after the reboot only.
    pub gained: Vec<String>,
}

/// Everything a finished trial knows.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The scenario's name.
    pub scenario: String,
    /// The cell.
    pub cell: Cell,
    /// The accelerator and why.
    pub accel: AccelChoice,
    /// `uname -r` in the guest.
    pub guest_kernel: String,
    /// Versions of the packages the scenario touches, from the image build.
    pub packages: BTreeMap<String, String>,
    /// Where the image came from (bootstrapped, or imported from a file).
    pub image_origin: String,
    /// What each step did.
    pub steps: Vec<StepRecord>,
    /// Captures taken just before the last reboot (empty without a reboot).
    pub before_reboot: Vec<Capture>,
    /// Captures at the end of the flow.
    pub captures: Vec<Capture>,
    /// What did not survive the last reboot.
    pub changes: Vec<Change>,
    /// Unit → `systemctl is-active` answer, for the expected units.
    pub units: BTreeMap<String, String>,
    /// The expectations that applied to this cell.
    pub expect: Expectations,
    /// Failed expectations, one line each; empty when all held.
    pub failures: Vec<String>,
    /// Seconds from QEMU start to the first ready shell.
    pub first_boot_seconds: f64,
    /// Seconds for the whole trial, image lookup included.
    pub total_seconds: f64,
    /// Where console log and captures were written.
    pub artifacts: PathBuf,
}

impl Outcome {
    /// Whether every expectation held.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// A booted guest with a ready shell.
struct Guest {
    vm: Vm,
    console: Console,
    facts: GuestFacts,
    first_boot_seconds: f64,
    packages: BTreeMap<String, String>,
    image_origin: String,
}

/// Builds or finds what the cell boots, starts QEMU and waits until the
/// guest's shell is ready and systemd has settled.
fn boot(
    project: &Project,
    cell: &Cell,
    options: &RunOptions,
    label: &str,
    artifacts: &std::path::Path,
) -> Result<Guest, RunError> {
    let recipe = project
        .recipes
        .get(&cell.release)
        .ok_or_else(|| ImageError::UnknownRelease {
            release: cell.release.clone(),
            dir: project.root.join("images"),
        })?;
    let image = image::image(&options.cache, recipe)?;
    let kernel = match cell.kernel {
        KernelFlavour::Stock => image.stock_kernel(),
        KernelFlavour::Linode => kernel::linode(&options.cache, &project.linode_kernel)?,
    };
    if artifacts.exists() {
        let _ = std::fs::remove_dir_all(artifacts);
    }
    progress::note(
        label,
        &format!(
            "booting {} with kernel {} ({})",
            cell.release,
            kernel.release,
            options.accel.accel.name()
        ),
    );
    let vm = Vm::start(&VmConfig {
        base_disk: image.disk.clone(),
        kernel,
        memory_mib: options.memory_mib,
        accel: options.accel.clone(),
        artifacts: artifacts.to_owned(),
    })?;
    let mut console = Console::attach(vm.control()?, Some(vm.console_log().to_owned()))?
        .with_login_banner(image::AUTOLOGIN_BANNER);
    console.wait_ready("the first boot to reach a shell", BOOT_TIMEOUT)?;
    let first_boot_seconds = vm.uptime().as_secs_f64();
    let state = console.wait_settled("systemd to finish the first boot", SETTLE_TIMEOUT)?;
    progress::note(
        label,
        &format!(
            "shell after {first_boot_seconds:.1}s, system {state} after {:.1}s",
            vm.uptime().as_secs_f64()
        ),
    );
    let facts = GuestFacts::read(&mut console)?;
    Ok(Guest {
        vm,
        console,
        facts,
        first_boot_seconds,
        packages: image.manifest.packages.clone(),
        image_origin: image.manifest.origin.clone(),
    })
}

/// Runs a scenario's steps; returns what each did and, when the flow
/// reboots, the captures taken just before the last reboot.
fn run_steps(
    guest: &mut Guest,
    scenario: &Scenario,
    label: &str,
) -> Result<(Vec<StepRecord>, Vec<Capture>), RunError> {
    let last_reboot = scenario
        .steps
        .iter()
        .rposition(|s| s.action == Action::Reboot);
    let total = scenario.steps.len();
    let mut steps = Vec::new();
    let mut before_reboot = Vec::new();
    for (i, step) in scenario.steps.iter().enumerate() {
        let index = i + 1;
        let what = format!("step {index}/{total} ({})", step.title);
        if Some(i) == last_reboot && !scenario.captures.is_empty() {
            progress::note(label, "capturing state before the reboot");
            before_reboot = capture::take(
                &mut guest.console,
                &scenario.captures,
                &guest.facts,
                "before the reboot",
            )?;
        }
        progress::note(label, &what);
        let step_started = Instant::now();
        let (output, expected) = match &step.action {
            Action::Run { command, status } => (
                Some(guest.console.run(&what, command, step.timeout)?),
                *status,
            ),
            Action::Write {
                path,
                content,
                mode,
            } => (
                Some(
                    guest
                        .console
                        .write_file(&what, path, content, *mode, step.timeout)?,
                ),
                0,
            ),
            Action::Reboot => {
                let timeout = step.timeout.max(BOOT_TIMEOUT);
                guest.console.reboot(&what, timeout)?;
                let state = guest.console.wait_settled(
                    &format!("{what}: systemd to finish booting"),
                    SETTLE_TIMEOUT,
                )?;
                progress::note(
                    label,
                    &format!(
                        "back after {:.1}s, system {state}",
                        step_started.elapsed().as_secs_f64()
                    ),
                );
                guest.facts = GuestFacts::read(&mut guest.console)?;
                (None, 0)
            }
        };
        if let Some(out) = output.as_ref().filter(|o| o.status != expected) {
            return Err(RunError::Step {
                index,
                title: step.title.clone(),
                got: out.status,
                expected,
                stdout: out.stdout.clone(),
                stderr: out.stderr.clone(),
            });
        }
        steps.push(StepRecord {
            title: step.title.clone(),
            action: step.action.clone(),
            output,
            seconds: step_started.elapsed().as_secs_f64(),
        });
    }
    Ok((steps, before_reboot))
}

/// Runs a scenario on one cell.
pub fn run_cell(
    project: &Project,
    scenario: &Scenario,
    cell: &Cell,
    options: &RunOptions,
) -> Result<Outcome, RunError> {
    let started = Instant::now();
    let label = format!("{} {}", scenario.name, cell);
    let artifacts = project.artifacts_dir(&scenario.name, &cell.to_string());
    let mut guest = boot(project, cell, options, &label, &artifacts)?;
    let (steps, before_reboot) = run_steps(&mut guest, scenario, &label)?;

    progress::note(&label, "capturing state");
    let captures = capture::take(
        &mut guest.console,
        &scenario.captures,
        &guest.facts,
        "at the end",
    )?;
    let mut units = BTreeMap::new();
    let expect = scenario.expectations_for(cell);
    for unit in expect.units.keys() {
        let out = guest.console.run(
            &format!("reading the state of {unit}"),
            &format!("systemctl is-active {}", crate::image::shell_quote(unit)),
            Duration::from_secs(30),
        )?;
        units.insert(unit.clone(), out.stdout.trim().to_owned());
    }
    let Guest {
        vm,
        facts,
        first_boot_seconds,
        packages,
        image_origin,
        ..
    } = guest;
    vm.stop();
    progress::finish(
        &label,
        &format!("done in {:.1}s", started.elapsed().as_secs_f64()),
    );

    let changes = persistence_diff(&before_reboot, &captures);
    let failures = check_expectations(&expect, &units, &before_reboot, &captures);
    write_artifacts(&artifacts, &before_reboot, &captures);
    Ok(Outcome {
        scenario: scenario.name.clone(),
        cell: cell.clone(),
        accel: options.accel.clone(),
        guest_kernel: facts.kernel_release,
        packages,
        image_origin,
        steps,
        before_reboot,
        captures,
        changes,
        units,
        expect,
        failures,
        first_boot_seconds,
        total_seconds: started.elapsed().as_secs_f64(),
        artifacts,
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
    let name = scenario.map(|s| s.name.as_str()).unwrap_or("shell");
    let label = format!("{name} {cell}");
    let artifacts = project.artifacts_dir(&format!("shell-{name}"), &cell.to_string());
    let mut guest = boot(project, cell, options, &label, &artifacts)?;
    if let Some(scenario) = scenario {
        run_steps(&mut guest, scenario, &label)?;
    }
    let (rows, cols) = progress::terminal_size();
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

/// Line-level differences between the captures before and after the reboot.
pub fn persistence_diff(before: &[Capture], after: &[Capture]) -> Vec<Change> {
    before
        .iter()
        .filter_map(|b| {
            let a = after.iter().find(|a| a.name == b.name)?;
            if a.text == b.text {
                return None;
            }
            let after_lines: Vec<&str> = a.text.lines().collect();
            let before_lines: Vec<&str> = b.text.lines().collect();
            Some(Change {
                name: b.name.clone(),
                lost: before_lines
                    .iter()
                    .filter(|l| !after_lines.contains(l))
                    .map(|l| l.to_string())
                    .collect(),
                gained: after_lines
                    .iter()
                    .filter(|l| !before_lines.contains(l))
                    .map(|l| l.to_string())
                    .collect(),
            })
        })
        .collect()
}

/// Checks a cell's expectations; one verdict line per failure.
pub fn check_expectations(
    expect: &Expectations,
    units: &BTreeMap<String, String>,
    before: &[Capture],
    after: &[Capture],
) -> Vec<String> {
    let find = |captures: &[Capture], name: &str| captures.iter().find(|c| c.name == name).cloned();
    let mut failures = Vec::new();
    for name in &expect.survive_reboot {
        if let (Some(b), Some(a)) = (find(before, name), find(after, name)) {
            if a.text != b.text || a.status != b.status {
                failures.push(format!(
                    "{name} not restored after reboot — {}, expected {}",
                    describe(&a),
                    describe(&b)
                ));
            }
        }
    }
    for name in &expect.lost_on_reboot {
        if let (Some(b), Some(a)) = (find(before, name), find(after, name)) {
            if a.text == b.text && a.status == b.status {
                failures.push(format!(
                    "{name} survived the reboot ({}), but this cell expects it lost; if something fixed it, update the scenario's expectations",
                    describe(&a)
                ));
            }
        }
    }
    for (unit, expected) in &expect.units {
        let got = units.get(unit).map(String::as_str).unwrap_or("(not read)");
        if got != expected {
            failures.push(format!("{unit} is {got}, expected {expected}"));
        }
    }
    for (name, texts) in &expect.contains {
        let raw = find(after, name).map(|c| c.raw).unwrap_or_default();
        for text in texts {
            if !raw.contains(text.as_str()) {
                failures.push(format!("{name} lacks {text:?}"));
            }
        }
    }
    failures
}

/// A short description of a capture for verdicts: the error if the command
/// failed, the INPUT chain of an iptables-save, else its size.
pub fn describe(capture: &Capture) -> String {
    if capture.status != 0 {
        let first = capture
            .raw
            .lines()
            .find(|l| !l.trim().is_empty() && !l.starts_with("[stderr]"))
            .unwrap_or("no output");
        return format!(
            "`{}` exited {}: {first}",
            capture.command.trim(),
            capture.status
        );
    }
    let policy = capture
        .text
        .lines()
        .find_map(|l| l.strip_prefix(":INPUT "))
        .and_then(|l| l.split_whitespace().next());
    let rules = capture
        .text
        .lines()
        .filter(|l| l.starts_with("-A INPUT"))
        .count();
    match policy {
        Some(policy) => format!("INPUT policy {policy} with {rules} rules"),
        None if capture.text.trim().is_empty() => "no rules at all".into(),
        None => format!("{} lines", capture.text.lines().count()),
    }
}

fn write_artifacts(dir: &std::path::Path, before: &[Capture], after: &[Capture]) {
    for (suffix, captures) in [("before-reboot", before), ("after", after)] {
        for capture in captures {
            let _ = std::fs::write(
                dir.join(format!("{}.{suffix}.txt", capture.name)),
                &capture.raw,
            );
        }
    }
}

/// The tail of a trial's console log, for messages.
pub fn console_tail(outcome: &Outcome) -> String {
    vm::tail_of(&outcome.artifacts.join("console.log"), vm::TAIL_LINES)
}
