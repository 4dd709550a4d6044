//! The `vmrepro` command line: a thin layer over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

use vmrepro::image::{Cache, ImageError};
use vmrepro::project::{Project, ProjectError};
use vmrepro::run::{self, RunError, RunOptions};
use vmrepro::scenario::{Cell, KernelFlavour, Scenario};
use vmrepro::{host, progress, report, snapshot, vm};

/// Exit status: every trial passed.
const EXIT_PASS: u8 = 0;
/// Exit status: a scenario failed (expectation, snapshot or guest error).
const EXIT_FAIL: u8 = 1;
/// Exit status: bad usage or input (a malformed scenario, an unknown name).
const EXIT_USAGE: u8 = 2;
/// Exit status: the environment is not fit (missing tools, unreachable release).
const EXIT_ENV: u8 = 3;

#[derive(Parser)]
#[command(
    name = "vmrepro",
    version,
    about = "Turn \"my machine breaks after a reboot\" bug reports into VM-based regression tests",
    after_help = "Exit status: 0 pass, 1 scenario failed, 2 usage or input error, 3 environment problem.\n\nEnvironment: VMREPRO_CACHE (cache directory), VMREPRO_ACCEL=kvm|tcg, VMREPRO_MIRROR and\nVMREPRO_MIRROR_<RELEASE> (Debian mirror), VMREPRO_NO_INSTALL=1 (never install host packages),\nVMREPRO_ROOT (project directory)."
)]
struct Cli {
    /// Print no progress lines.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Reproduce one scenario on one release and kernel, and print a Markdown report.
    #[command(
        after_help = "Example:\n  vmrepro repro netfilter-persistent-reboot --release bookworm --kernel stock"
    )]
    Repro {
        /// Scenario name (a file in scenarios/) or path to a scenario file.
        scenario: String,
        /// Release to boot; defaults to the scenario's first.
        #[arg(long)]
        release: Option<String>,
        /// Kernel flavour; defaults to the scenario's first.
        #[arg(long)]
        kernel: Option<String>,
        /// Write the report to this file instead of standard output.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Run scenarios over their matrices and compare with the committed snapshots.
    #[command(
        after_help = "Examples:\n  vmrepro run\n  vmrepro run netfilter-persistent-reboot --release bookworm"
    )]
    Run {
        /// Scenarios to run (names or paths); all when none are given.
        scenarios: Vec<String>,
        /// Only cells of this release.
        #[arg(long)]
        release: Option<String>,
        /// Only cells of this kernel flavour.
        #[arg(long)]
        kernel: Option<String>,
    },
    /// List scenarios and their matrix cells.
    List,
    /// Check the host tools and install what is missing (as root, with apt).
    Setup,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    progress::set_quiet(cli.quiet);
    match dispatch(cli.command) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("vmrepro: {e:#}");
            ExitCode::from(classify(&e))
        }
    }
}

/// Maps an error to the documented exit status.
fn classify(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if cause.downcast_ref::<ProjectError>().is_some() {
            return EXIT_USAGE;
        }
        if cause.downcast_ref::<UsageError>().is_some() {
            return EXIT_USAGE;
        }
        if cause.downcast_ref::<host::HostError>().is_some() {
            return EXIT_ENV;
        }
        if let Some(RunError::Image(ImageError::Unreachable { .. })) =
            cause.downcast_ref::<RunError>()
        {
            return EXIT_ENV;
        }
        if cause.downcast_ref::<vm::VmError>().is_some() {
            return EXIT_ENV;
        }
    }
    EXIT_FAIL
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

fn dispatch(command: Command) -> Result<u8> {
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let project = Project::discover(&cwd)?;
    // insta would otherwise ask `cargo metadata` where the workspace is.
    std::env::set_var("INSTA_WORKSPACE_ROOT", &project.root);
    match command {
        Command::List => {
            for scenario in project.scenarios()? {
                let cells: Vec<String> = scenario
                    .matrix
                    .cells()
                    .iter()
                    .map(Cell::to_string)
                    .collect();
                println!("{}: {}", scenario.name, cells.join(" "));
            }
            Ok(EXIT_PASS)
        }
        Command::Setup => {
            host::ensure_tools()?;
            for tool in host::TOOLS {
                let version =
                    host::tool_version(tool.command).unwrap_or_else(|| "installed".into());
                println!("{:<20} {version}", tool.command);
            }
            let accel = vm::choose_accel()?;
            println!(
                "accelerator          {} ({})",
                accel.accel.name(),
                accel.reason
            );
            println!(
                "cache                {}",
                Cache::from_env().root().display()
            );
            Ok(EXIT_PASS)
        }
        Command::Repro {
            scenario,
            release,
            kernel,
            output,
        } => {
            let scenario = project.scenario(&scenario)?;
            let cell = pick_cell(&scenario, release.as_deref(), kernel.as_deref())?;
            let options = run_options()?;
            let qemu = host::tool_version("qemu-system-x86_64").unwrap_or_default();
            let (markdown, code) = match run::run_cell(&project, &scenario, &cell, &options) {
                Ok(outcome) => {
                    let code = if outcome.passed() {
                        EXIT_PASS
                    } else {
                        EXIT_FAIL
                    };
                    (report::markdown(&scenario, &outcome, &qemu), code)
                }
                Err(e) => {
                    let code = match &e {
                        RunError::Image(ImageError::Unreachable { .. }) | RunError::Vm(_) => {
                            EXIT_ENV
                        }
                        _ => EXIT_FAIL,
                    };
                    (
                        report::markdown_error(&scenario, &cell.to_string(), &e),
                        code,
                    )
                }
            };
            match output {
                Some(path) => {
                    std::fs::write(&path, &markdown)
                        .with_context(|| format!("writing {}", path.display()))?;
                    eprintln!("vmrepro: report written to {}", path.display());
                }
                None => print!("{markdown}"),
            }
            Ok(code)
        }
        Command::Run {
            scenarios,
            release,
            kernel,
        } => {
            let selected: Vec<Scenario> = if scenarios.is_empty() {
                project.scenarios()?
            } else {
                scenarios
                    .iter()
                    .map(|s| project.scenario(s))
                    .collect::<Result<_, _>>()?
            };
            let kernel = kernel.as_deref().map(parse_kernel).transpose()?;
            let options = run_options()?;
            let mut rows = Vec::new();
            let mut worst = EXIT_PASS;
            for scenario in &selected {
                for cell in scenario.matrix.cells() {
                    if release.as_ref().is_some_and(|r| r != &cell.release)
                        || kernel.is_some_and(|k| k != cell.kernel)
                    {
                        continue;
                    }
                    let (result, code) = run_and_compare(&project, scenario, &cell, &options);
                    worst = worst.max(code);
                    rows.push((scenario.name.clone(), cell.to_string(), result));
                }
            }
            if rows.is_empty() {
                return Err(UsageError("no matrix cell matches the selection".into()).into());
            }
            println!("\n{:<32} {:<20} result", "scenario", "cell");
            for (scenario, cell, result) in rows {
                println!("{scenario:<32} {cell:<20} {result}");
            }
            Ok(worst)
        }
    }
}

fn run_options() -> Result<RunOptions> {
    host::ensure_tools()?;
    let accel = vm::choose_accel()?;
    progress::note(
        "vmrepro",
        &format!("accelerator {} ({})", accel.accel.name(), accel.reason),
    );
    Ok(RunOptions {
        cache: Cache::from_env(),
        accel,
        memory_mib: 1024,
    })
}

fn parse_kernel(name: &str) -> Result<KernelFlavour> {
    KernelFlavour::from_name(name).ok_or_else(|| {
        let known: Vec<&str> = KernelFlavour::ALL.iter().map(|k| k.name()).collect();
        UsageError(format!(
            "unknown kernel flavour {name:?} (known: {})",
            known.join(", ")
        ))
        .into()
    })
}

fn pick_cell(scenario: &Scenario, release: Option<&str>, kernel: Option<&str>) -> Result<Cell> {
    let release = match release {
        Some(r) => r.to_owned(),
        None => scenario.matrix.releases[0].clone(),
    };
    let kernel = match kernel {
        Some(k) => parse_kernel(k)?,
        None => scenario.matrix.kernels[0],
    };
    let cell = Cell { release, kernel };
    if !scenario.matrix.cells().contains(&cell) {
        let cells: Vec<String> = scenario
            .matrix
            .cells()
            .iter()
            .map(Cell::to_string)
            .collect();
        return Err(UsageError(format!(
            "{} is not in the matrix of {} (cells: {})",
            cell,
            scenario.name,
            cells.join(", ")
        ))
        .into());
    }
    Ok(cell)
}

fn run_and_compare(
    project: &Project,
    scenario: &Scenario,
    cell: &Cell,
    options: &RunOptions,
) -> (String, u8) {
    match run::run_cell(project, scenario, cell, options) {
        Err(RunError::Image(ImageError::Unreachable { reason, .. })) => {
            (format!("skipped: {reason}"), EXIT_ENV)
        }
        Err(e) => {
            eprintln!("vmrepro: {} on {cell}: {e}", scenario.name);
            ("ERROR (see above)".into(), EXIT_FAIL)
        }
        Ok(outcome) => {
            let compared = snapshot::compare_outcome(&project.snapshots_dir(), scenario, &outcome);
            match (outcome.passed(), compared) {
                (true, Ok(())) => ("pass".into(), EXIT_PASS),
                (true, Err(e)) => (format!("snapshot differs: {e}"), EXIT_FAIL),
                (false, c) => (
                    format!(
                        "FAIL: {}{}",
                        outcome.failures.join("; "),
                        if c.is_err() {
                            " (snapshot differs too)"
                        } else {
                            ""
                        }
                    ),
                    EXIT_FAIL,
                ),
            }
        }
    }
}
