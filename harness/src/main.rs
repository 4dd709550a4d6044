//! The `vmrepro` command line: a thin layer over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

use vmrepro::cache::Cache;
use vmrepro::image::ImageError;
use vmrepro::project::{Project, ProjectError};
use vmrepro::run::{self, RunError, RunOptions};
use vmrepro::scenario::{Cell, KernelFlavour, Scenario};
use vmrepro::{host, image, kernel, progress, report, snapshot, vm};

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
        /// Format of the outcome table printed at the end.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// List scenarios and their matrix cells.
    List,
    /// Print the outcome table (release × kernel × scenario) of the last runs,
    /// from `vmrepro run` or `cargo test`.
    #[command(after_help = "Example:\n  vmrepro matrix --format json")]
    Matrix {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Build, list, import and remove cached images and kernels.
    #[command(subcommand)]
    Images(ImagesCommand),
    /// Check the host tools and install what is missing (as root, with apt).
    Setup,
}

/// Output formats of `run` and `matrix`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// An aligned table.
    Text,
    /// A JSON array of rows: {scenario, release, kernel, after_reboot, units, verdict}.
    Json,
}

#[derive(Subcommand)]
enum ImagesCommand {
    /// List the cache's entries with their sizes.
    List,
    /// Build the images of releases (all when none are named) and the Linode-style kernel.
    #[command(
        after_help = "Examples:\n  vmrepro images build bookworm trixie\n  vmrepro images build --kernel-only"
    )]
    Build {
        /// Releases to build.
        releases: Vec<String>,
        /// Build only the Linode-style kernel.
        #[arg(long)]
        kernel_only: bool,
        /// Do not build the Linode-style kernel.
        #[arg(long, conflicts_with = "kernel_only")]
        no_kernel: bool,
    },
    /// Remove cache entries: everything, or the entries of the releases named
    /// (`kernels` names the kernel entries).
    Clean {
        /// Releases (or `kernels`) to remove; everything when none are named.
        names: Vec<String>,
    },
    /// Use your own root file system tarball as a release's image, instead of
    /// a bootstrapped one (until `vmrepro images clean RELEASE`).
    #[command(after_help = "Example:\n  vmrepro images import bookworm my-server-rootfs.tar.gz")]
    Import {
        /// The release the tarball is an installation of.
        release: String,
        /// A tarball of the root file system (tar, tar.gz, tar.xz, tar.zst).
        file: PathBuf,
    },
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
        Command::Images(command) => images(&project, command),
        Command::Matrix { format } => {
            let mut rows = report::load_rows(&project.root.join("target/vmrepro"));
            report::sort_rows(&mut rows);
            print_rows(&rows, format)?;
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
            format,
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
                    let (row, code) = run_and_compare(&project, scenario, &cell, &options);
                    report::save_row(
                        &project.artifacts_dir(&scenario.name, &cell.to_string()),
                        &row,
                    );
                    worst = worst.max(code);
                    rows.push(row);
                }
            }
            if rows.is_empty() {
                return Err(UsageError("no matrix cell matches the selection".into()).into());
            }
            report::sort_rows(&mut rows);
            print_rows(&rows, format)?;
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
) -> (report::Row, u8) {
    let without = |verdict: String| report::Row::without_outcome(&scenario.name, cell, verdict);
    match run::run_cell(project, scenario, cell, options) {
        Err(RunError::Image(ImageError::Unreachable { reason, .. })) => {
            (without(format!("skipped: {reason}")), EXIT_ENV)
        }
        Err(e) => {
            eprintln!("vmrepro: {} on {cell}: {e}", scenario.name);
            let first = e.to_string().lines().next().unwrap_or("").to_owned();
            (without(format!("ERROR: {first}")), EXIT_FAIL)
        }
        Ok(outcome) => {
            let compared = snapshot::compare_outcome(&project.snapshots_dir(), scenario, &outcome)
                .map_err(|_| "snapshot differs (diff above)".to_owned());
            let row = report::Row::of(&outcome, compared);
            let code = if row.verdict == "pass" {
                EXIT_PASS
            } else {
                EXIT_FAIL
            };
            (row, code)
        }
    }
}

fn print_rows(rows: &[report::Row], format: Format) -> Result<()> {
    match format {
        Format::Text if rows.is_empty() => {
            println!("no results yet: run `vmrepro run` or `cargo test`")
        }
        Format::Text => print!("{}", report::table(rows)),
        Format::Json => println!("{}", serde_json::to_string_pretty(rows)?),
    }
    Ok(())
}

fn images(project: &Project, command: ImagesCommand) -> Result<u8> {
    let cache = Cache::from_env();
    let recipe_of = |release: &str| {
        project.recipes.get(release).ok_or_else(|| {
            let known: Vec<&str> = project.recipes.keys().map(String::as_str).collect();
            anyhow::Error::from(UsageError(format!(
                "no image recipe for release {release:?} (known: {})",
                known.join(", ")
            )))
        })
    };
    match command {
        ImagesCommand::List => {
            println!("cache: {}", cache.root().display());
            for row in cache.list() {
                println!(
                    "{:<8} {:<40} {:>8.1} MiB{}",
                    row.kind,
                    row.name,
                    row.bytes as f64 / (1 << 20) as f64,
                    if row.complete {
                        ""
                    } else {
                        "  (incomplete: rebuilt on next use)"
                    }
                );
            }
            Ok(EXIT_PASS)
        }
        ImagesCommand::Build {
            releases,
            kernel_only,
            no_kernel,
        } => {
            host::ensure_tools()?;
            if !no_kernel {
                let kernel = kernel::linode(&cache, &project.linode_kernel)?;
                println!(
                    "kernel linode    {} ({})",
                    kernel.release,
                    kernel.image.display()
                );
            }
            if kernel_only {
                return Ok(EXIT_PASS);
            }
            let names: Vec<String> = if releases.is_empty() {
                project.recipes.keys().cloned().collect()
            } else {
                releases
            };
            let mut code = EXIT_PASS;
            for release in names {
                let recipe = recipe_of(&release)?;
                if image::lookup(&cache, recipe).is_none() {
                    if let Err(e) = image::probe_reachable(recipe) {
                        eprintln!("vmrepro: {e}");
                        code = EXIT_ENV;
                        continue;
                    }
                }
                let built = image::image(&cache, recipe)?;
                println!(
                    "image {:<10} {} (stock kernel {})",
                    release,
                    built.dir.display(),
                    built.manifest.stock_kernel_release
                );
            }
            Ok(code)
        }
        ImagesCommand::Clean { names } => {
            let releases: Vec<String> = names
                .iter()
                .filter(|n| n.as_str() != "kernels")
                .map(|n| recipe_of(n).map(|r| r.release.clone()))
                .collect::<Result<_>>()?;
            let removed = cache.remove(|row| {
                names.is_empty()
                    || (row.kind == kernel::KIND && names.iter().any(|n| n == "kernels"))
                    || releases.iter().any(|release| {
                        row.name == *release || row.name.starts_with(&format!("{release}-"))
                    })
            })?;
            for row in &removed {
                println!("removed {}/{}", row.kind, row.name);
            }
            if removed.is_empty() {
                println!("nothing to remove");
            }
            Ok(EXIT_PASS)
        }
        ImagesCommand::Import { release, file } => {
            host::ensure_tools()?;
            let recipe = recipe_of(&release)?;
            let imported = image::import_tarball(&cache, recipe, &file)?;
            println!(
                "imported {} as the {release} image ({}; stock kernel {})",
                file.display(),
                imported.dir.display(),
                imported.manifest.stock_kernel_release
            );
            Ok(EXIT_PASS)
        }
    }
}
