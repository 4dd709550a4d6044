//! The `vmrepro` command line: a thin layer over the library.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

use vmrepro::cache::Cache;
use vmrepro::progress::{Events, Terminal};
use vmrepro::project::{Project, ProjectError};
use vmrepro::scenario::{Cell, FirstBoot, KernelFlavour, Scenario, Shard};
use vmrepro::settings::{AccelWanted, Settings, SettingsError};
use vmrepro::trial::{self, RunError, RunOptions};
use vmrepro::{image, kernel, report, tools, vm};

use vmrepro::verdict::{self, EXIT_ENV, EXIT_FAIL, EXIT_PASS, EXIT_USAGE};

/// `vmrepro exec`'s status when it could not run the command (ssh(1): "exits
/// with the exit status of the remote command or with 255 if an error
/// occurred").
const EXIT_EXEC: u8 = 255;

/// `println!` for results on standard output: a reader that goes away (a
/// closed pipe, as in `vmrepro list | head -1`) ends the program quietly
/// with status 0 instead of a panic.
macro_rules! out {
    ($($arg:tt)*) => { emit(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` with the same closed-pipe behaviour as [`out!`].
macro_rules! outp {
    ($($arg:tt)*) => { emit(format_args!($($arg)*)) };
}

fn emit(text: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(text).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(i32::from(EXIT_PASS));
        }
        eprintln!("vmrepro: writing to standard output: {e}");
        std::process::exit(i32::from(EXIT_ENV));
    }
}

#[derive(Parser)]
#[command(
    name = "vmrepro",
    version,
    about = "Turn \"my machine breaks after a reboot\" bug reports into VM-based regression tests",
    after_help = AFTER_HELP,
)]
struct Cli {
    /// Print no progress lines.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Print every progress event as its own line, even on a terminal.
    #[arg(short, long, global = true)]
    verbose: bool,
    /// Boot every guest from power-on instead of resuming the saved state of
    /// an already booted one (reboots in a scenario are real either way);
    /// the same as `--first-boot cold`.
    #[arg(long, global = true)]
    cold: bool,
    /// How guests reach their first shell: resumed from a saved, booted
    /// state (warm) or booted from power-on (cold).
    #[arg(long, global = true, value_enum, value_name = "HOW")]
    first_boot: Option<FirstBootArg>,
    /// The accelerator: kvm (refused where KVM cannot run guests), tcg, or
    /// auto (KVM where it works, else TCG).
    #[arg(long, global = true, value_enum, value_name = "ACCEL")]
    accel: Option<AccelArg>,
    /// The image and kernel cache (default: $XDG_CACHE_HOME/vmrepro, else ~/.cache/vmrepro).
    #[arg(long, global = true, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// The project directory (default: found from the current directory).
    #[arg(long, global = true, value_name = "DIR")]
    project: Option<PathBuf>,
    /// Never install host packages; print the commands instead.
    #[arg(long, global = true)]
    no_install: bool,
    /// When to colour the outcome table. `auto` colours a terminal unless
    /// NO_COLOR is set; CLICOLOR_FORCE=1 colours even a pipe.
    #[arg(long, global = true, value_enum, default_value_t = ColorArg::Auto, value_name = "WHEN")]
    color: ColorArg,
    #[command(subcommand)]
    command: Command,
}

const AFTER_HELP: &str = "Exit status: 0 every trial passed (pass or reproduced); 1 a trial failed, or is new (no \
committed snapshot yet); 2 usage or input error; 3 environment problem (nothing failed, but a trial could \
not run: tools, image, kernel, QEMU, a required release); 4 everything that ran passed, but some trials \
were skipped (their release cannot be fetched here). A failure wins over an environment problem, and \
both over skips.

Verdicts: pass, reproduced (the cell asserts the state is lost, and it is), new (no committed snapshot: \
read it, then `vmrepro accept`), fail, error (the host could not run it), skipped.

Environment (an option given wins over its variable; an empty variable counts as unset):
  VMREPRO_ACCEL=auto|kvm|tcg   as --accel
  VMREPRO_FIRST_BOOT=warm|cold as --first-boot
  VMREPRO_CACHE=DIR            as --cache
  VMREPRO_ROOT=DIR             as --project
  VMREPRO_NO_INSTALL=1         as --no-install (1/0, true/false, yes/no, on/off)
  VMREPRO_SHARD=K/N            as `run --shard`
  VMREPRO_ARTIFACTS=DIR        where reports and rows go, relative to the project (default target/vmrepro)
  VMREPRO_MIRROR, VMREPRO_MIRROR_<RELEASE>   Debian mirror or apt proxy to bootstrap from
  VMREPRO_REQUIRE_ALL=1, VMREPRO_REQUIRE=bookworm,trixie   a release that cannot be fetched is an
                               error, not a skip
  NO_COLOR, CLICOLOR_FORCE     see --color
A value a variable does not accept is a usage error that names it (exit status 2; 255 for exec).";

/// `--first-boot`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum FirstBootArg {
    /// Resume a saved, booted state.
    Warm,
    /// Boot from power-on.
    Cold,
}

/// `--accel`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum AccelArg {
    /// KVM where it can run guests, else TCG.
    Auto,
    /// KVM, or an error.
    Kvm,
    /// QEMU's emulator.
    Tcg,
}

/// `--color`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ColorArg {
    /// On a terminal, unless NO_COLOR is set (or CLICOLOR_FORCE=1 says always).
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

impl ColorArg {
    fn wanted(self, settings: &Settings) -> bool {
        use std::io::IsTerminal as _;
        match self {
            ColorArg::Always => true,
            ColorArg::Never => false,
            ColorArg::Auto if settings.no_color => false,
            ColorArg::Auto if settings.clicolor_force => true,
            ColorArg::Auto => std::io::stdout().is_terminal(),
        }
    }
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
        /// When the trial fails (a step, a capture, an expectation or the
        /// snapshot), keep the guest and open a root shell in it; leaving
        /// the shell stops it. Needs a terminal.
        #[arg(long)]
        shell_fail: bool,
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
        /// How many guests run at once (default: from cores and free memory).
        #[arg(short = 'j', long)]
        jobs: Option<usize>,
        /// Run only share K of N of the cells (1-based, counted over every
        /// cell of the selected scenarios before --release and --kernel
        /// filter them), to split a suite across machines; the same split as
        /// `VMREPRO_SHARD` in `cargo test`.
        #[arg(long, value_name = "K/N", value_parser = Shard::parse)]
        shard: Option<Shard>,
        /// With a selection of exactly one cell: when it fails, keep the
        /// guest and open a root shell in it (as `repro --shell-fail`).
        #[arg(long)]
        shell_fail: bool,
    },
    /// Run one command as root in a guest (after a scenario's steps, if
    /// asked), print its output and exit with its status.
    #[command(
        after_help = "Exit status: the command's own, or 255 when vmrepro could not run it (as ssh(1) does).

One argument is a shell command line; several are a command and its arguments, each quoted.

Examples:
  vmrepro exec --release bookworm --kernel stock -- uname -r
  vmrepro exec --release trixie --kernel linode --after netfilter-persistent-reboot -- 'iptables-save | head'"
    )]
    Exec {
        #[command(flatten)]
        guest: GuestArgs,
        /// Seconds the command may run before it is stopped inside the guest.
        #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        timeout: u64,
        /// The command.
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "COMMAND"
        )]
        command: Vec<String>,
    },
    /// List scenarios and their matrix cells.
    List {
        /// Output format.
        #[arg(long, value_enum, default_value_t = ListFormat::Text)]
        format: ListFormat,
    },
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
    /// Check the host without changing it: tools, accelerator, cache, mirrors.
    Doctor {
        /// Output format.
        #[arg(long, value_enum, default_value_t = ListFormat::Text)]
        format: ListFormat,
    },
    /// An interactive root shell in a guest, optionally after a scenario's
    /// steps (reboots included). Ctrl-] leaves; the guest is always stopped.
    #[command(
        after_help = "Examples:\n  vmrepro shell --release bookworm --kernel linode\n  vmrepro shell --release trixie --kernel stock --after netfilter-persistent-reboot"
    )]
    Shell {
        #[command(flatten)]
        guest: GuestArgs,
    },
    /// Accept pending snapshots (snapshots/NAME.snap.new, written by a first run
    /// or a changed one) after reading them: all, or those of the scenarios or
    /// SCENARIO@CELL names given.
    #[command(
        after_help = "Examples:\n  vmrepro accept --list\n  vmrepro accept sysctl-of-a-late-module\n  vmrepro accept sysctl-of-a-late-module@bookworm-stock"
    )]
    Accept {
        /// Scenarios or SCENARIO@CELL names; every pending snapshot when none.
        names: Vec<String>,
        /// Only list the pending snapshots.
        #[arg(long)]
        list: bool,
    },
    /// Write a commented scenario skeleton to scenarios/NAME.toml.
    #[command(
        after_help = "Example:\n  vmrepro new sshd-port-after-reboot\n  vmrepro repro sshd-port-after-reboot"
    )]
    New {
        /// The scenario's name (letters, digits, `-` and `_`).
        name: String,
    },
}

/// Which guest `shell` and `exec` boot.
#[derive(clap::Args)]
struct GuestArgs {
    /// Release to boot.
    #[arg(long)]
    release: String,
    /// Kernel flavour.
    #[arg(long, default_value = "stock")]
    kernel: String,
    /// Run this scenario's steps first.
    #[arg(long)]
    after: Option<String>,
}

/// Output formats of `list`, `images list` and `doctor`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ListFormat {
    /// Lines for people.
    Text,
    /// JSON for programs.
    Json,
}

/// Output formats of `run` and `matrix`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// An aligned table.
    Text,
    /// A JSON array of rows: {scenario, release, kernel, after_reboot, units, status, verdict, accel}.
    Json,
    /// A Markdown table (for CI job summaries and bug reports).
    Markdown,
}

#[derive(Subcommand)]
enum ImagesCommand {
    /// List the cache's entries with their sizes.
    List {
        /// Output format.
        #[arg(long, value_enum, default_value_t = ListFormat::Text)]
        format: ListFormat,
    },
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
    /// (their images and saved warm states); `kernels` names the kernel
    /// entries and `warm` every saved warm state.
    Clean {
        /// Releases, `kernels` or `warm`; everything when none are named.
        names: Vec<String>,
    },
    /// Print the cache key of a release's image, or of the Linode-style kernel
    /// (for CI caches such as actions/cache).
    #[command(
        after_help = "Examples:\n  vmrepro images key bookworm\n  vmrepro images key --kernel"
    )]
    Key {
        /// The release whose image key to print.
        #[arg(required_unless_present = "kernel")]
        release: Option<String>,
        /// Print the key of a kernel flavour built from a recipe instead: the one
        /// named, or the only one (installs its source package if allowed).
        #[arg(long, conflicts_with = "release", num_args = 0..=1, default_missing_value = "", value_name = "FLAVOUR")]
        kernel: Option<String>,
    },
    /// Use your own machine's root file system as a release's image, instead
    /// of a bootstrapped one (until `vmrepro images clean RELEASE`).
    #[command(
        after_help = "Examples:\n  vmrepro images import bookworm my-server-rootfs.tar.gz\n  vmrepro images import bookworm my-server.qcow2"
    )]
    Import {
        /// The release the tarball is an installation of.
        release: String,
        /// A tarball of the root file system (tar, tar.gz, tar.xz, tar.zst), or a
        /// disk image (qcow2, raw, vmdk…) holding an ext file system, bare or
        /// in an MBR/GPT partition.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Progress is rendered here, on standard error: live lines on a
    // terminal, plain ones with -v or off a terminal, none with -q.
    let terminal = Arc::new(Terminal::new(cli.quiet, !cli.verbose));
    // `exec` passes the command's status through, so its own failures
    // need a status no command is likely to give.
    let exec = matches!(cli.command, Command::Exec { .. });
    let settings = match settings(&cli) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("vmrepro: {e}");
            return ExitCode::from(if exec { EXIT_EXEC } else { EXIT_USAGE });
        }
    };
    let outputs = Outputs {
        colour: cli.color.wanted(&settings),
        events: Events::new(terminal.clone()),
        terminal,
        settings,
    };
    match dispatch(cli.command, outputs) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("vmrepro: {e:#}");
            ExitCode::from(if exec { EXIT_EXEC } else { classify(&e) })
        }
    }
}

/// The run's settings: the environment's, and the options over them.
fn settings(cli: &Cli) -> Result<Settings, SettingsError> {
    let mut settings = Settings::from_env()?;
    match cli.accel {
        Some(AccelArg::Auto) => settings.accel = AccelWanted::Auto,
        Some(AccelArg::Kvm) => settings.accel = AccelWanted::Kvm,
        Some(AccelArg::Tcg) => settings.accel = AccelWanted::Tcg,
        None => {}
    }
    match cli.first_boot {
        Some(FirstBootArg::Warm) => settings.first_boot = FirstBoot::Warm,
        Some(FirstBootArg::Cold) => settings.first_boot = FirstBoot::Cold,
        None => {}
    }
    if cli.cold {
        settings.first_boot = FirstBoot::Cold;
    }
    if let Some(cache) = &cli.cache {
        settings.cache = cache.clone();
    }
    if let Some(project) = &cli.project {
        settings.project = Some(project.clone());
    }
    if cli.no_install {
        settings.install = false;
    }
    Ok(settings)
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
        if cause.downcast_ref::<tools::HostError>().is_some() {
            return EXIT_ENV;
        }
        // A flow that broke (`shell`, `exec`): the verdict `run` gives it,
        // with the release required: one that cannot be fetched is the
        // host's problem here, not a skip.
        if let Some(e) = cause.downcast_ref::<RunError>() {
            let message = e.to_string();
            return verdict::decide(verdict::Ended::Unfinished {
                why: e.unfinished(),
                message: &message,
                release: "the release",
                required: true,
            })
            .status
            .exit_code();
        }
        // Building an image or a kernel (`images build`, `images import`)
        // failed, or QEMU did: the host's problem, as in a trial.
        if cause.downcast_ref::<vm::VmError>().is_some()
            || cause.downcast_ref::<image::ImageError>().is_some()
            || cause.downcast_ref::<kernel::KernelError>().is_some()
        {
            return EXIT_ENV;
        }
    }
    EXIT_FAIL
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

/// What every command is given: the run's settings, and how results and
/// progress are shown.
#[derive(Clone)]
struct Outputs {
    colour: bool,
    /// What the library's layers report their progress to.
    events: Events,
    /// Renders `events`; the interactive shell stops its live lines.
    terminal: Arc<Terminal>,
    /// The environment's settings with the options over them.
    settings: Settings,
}

impl Outputs {
    /// The cache, reporting its builds to the terminal.
    fn cache(&self) -> Cache {
        self.settings.cache().with_events(self.events.clone())
    }
}

fn dispatch(command: Command, outputs: Outputs) -> Result<u8> {
    let cwd = std::env::current_dir().context("reading the current directory")?;
    // The host commands need no project: they check and fix this machine.
    match command {
        Command::Setup => return setup(&outputs),
        Command::Doctor { format } => {
            return doctor(
                outputs.settings.project(&cwd).ok().as_ref(),
                format,
                &outputs,
            )
        }
        _ => {}
    }
    let project = outputs.settings.project(&cwd)?;
    // insta would otherwise ask `cargo metadata` where the workspace is.
    std::env::set_var("INSTA_WORKSPACE_ROOT", &project.root);
    // insta's own output is written for `cargo test` users (hints about
    // `cargo insta`, the assertion's source line in the harness); the
    // command line says the same in its own words, and the report carries
    // the diff.
    std::env::set_var("INSTA_OUTPUT", "none");
    match command {
        Command::List { format } => {
            let scenarios = project.scenarios()?;
            if format == ListFormat::Json {
                let list: Vec<serde_json::Value> = scenarios
                    .iter()
                    .map(|s| {
                        serde_json::json!({
                            "name": s.name,
                            "path": s.path,
                            "cells": s.matrix.cells().iter().map(|c| serde_json::json!({
                                "release": c.release,
                                "kernel": c.kernel.name(),
                            })).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                out!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(EXIT_PASS);
            }
            for scenario in scenarios {
                out!(
                    "{}: {}",
                    scenario.name,
                    scenario.matrix.cell_names().join(" ")
                );
            }
            Ok(EXIT_PASS)
        }
        Command::Images(command) => images(&project, command, &outputs),
        Command::Matrix { format } => {
            let mut rows = report::load_rows(&project.artifacts_root());
            report::sort_rows(&mut rows);
            print_rows(&rows, format, &outputs)?;
            Ok(EXIT_PASS)
        }
        Command::Setup | Command::Doctor { .. } => unreachable!("answered above"),
        Command::Shell { guest } => {
            let (scenario, cell) = guest_of(&project, &guest)?;
            let options = run_options(&outputs)?;
            let terminal = outputs.terminal.clone();
            trial::shell(&project, scenario.as_ref(), &cell, &options, |stream| {
                // The terminal is the shell's now.
                terminal.stop_live();
                interactive(stream)
            })?;
            eprintln!("\nvmrepro: left the shell; the guest is stopped");
            Ok(EXIT_PASS)
        }
        Command::New { name } => new_scenario(&project, &name),
        Command::Accept { names, list } => {
            let dir = project.snapshots_dir();
            if list {
                for name in vmrepro::snapshot::pending(&dir)? {
                    out!("{}", dir.join(format!("{name}.snap.new")).display());
                }
                return Ok(EXIT_PASS);
            }
            let accepted = vmrepro::snapshot::accept(&dir, &names)?;
            if accepted.is_empty() {
                return Err(UsageError(format!(
                    "no pending snapshot{} in {}",
                    if names.is_empty() {
                        String::new()
                    } else {
                        format!(" for {}", names.join(", "))
                    },
                    dir.display()
                ))
                .into());
            }
            for name in accepted {
                out!("accepted {}", dir.join(format!("{name}.snap")).display());
            }
            Ok(EXIT_PASS)
        }
        Command::Exec {
            guest,
            timeout,
            command,
        } => {
            let (scenario, cell) = guest_of(&project, &guest)?;
            let options = run_options(&outputs)?;
            let out = trial::exec(
                &project,
                scenario.as_ref(),
                &cell,
                &options,
                &command,
                std::time::Duration::from_secs(timeout),
            )?;
            outputs.terminal.stop_live();
            outp!("{}", out.stdout);
            eprint!("{}", out.stderr);
            Ok(u8::try_from(out.status).unwrap_or(EXIT_EXEC))
        }
        Command::Repro {
            scenario,
            release,
            kernel,
            output,
            shell_fail,
        } => {
            let scenario = project.scenario(&scenario)?;
            let cell = pick_cell(&project, &scenario, release.as_deref(), kernel.as_deref())?;
            if shell_fail {
                need_terminal()?;
            }
            let options = run_options(&outputs)?;
            // The same path as `run` and the test target, so the same cell
            // gets the same verdict and exit status through all three.
            let (checked, kept) =
                trial::check_keeping(&project, &scenario, &cell, &options, shell_fail);
            let code = checked.row.status.exit_code();
            let markdown = &checked.report;
            match output {
                Some(path) => {
                    std::fs::write(&path, markdown)
                        .with_context(|| format!("writing {}", path.display()))?;
                    eprintln!("vmrepro: report written to {}", path.display());
                }
                None => outp!("{markdown}"),
            }
            if let Some(kept) = kept {
                shell_after_failure(kept, &checked, &outputs)?;
            }
            Ok(code)
        }
        Command::Run {
            scenarios,
            release,
            kernel,
            format,
            jobs,
            shard,
            shell_fail,
        } => {
            if shell_fail {
                need_terminal()?;
            }
            let selected: Vec<Scenario> = if scenarios.is_empty() {
                project.scenarios()?
            } else {
                scenarios
                    .iter()
                    .map(|s| project.scenario(s))
                    .collect::<Result<_, _>>()?
            };
            let kernel = kernel
                .as_deref()
                .map(|k| parse_kernel(&project, k))
                .transpose()?;
            let options = run_options(&outputs)?;
            let cells = vmrepro::scenario::trials_of(&selected);
            // Sharded first, as the test target does, then filtered.
            let cells = match shard.or(outputs.settings.shard) {
                Some(shard) => shard.select(cells),
                None => cells,
            };
            let cells: Vec<(Scenario, Cell)> = cells
                .into_iter()
                .filter(|(_, cell)| {
                    release.as_ref().is_none_or(|r| r == &cell.release)
                        && kernel.as_ref().is_none_or(|k| k == &cell.kernel)
                })
                .collect();
            if cells.is_empty() {
                return Err(UsageError("no matrix cell matches the selection".into()).into());
            }
            if shell_fail {
                let [(scenario, cell)] = cells.as_slice() else {
                    return Err(UsageError(format!(
                        "--shell-fail keeps one guest: select exactly one cell (with a scenario, --release and --kernel); this selection has {}",
                        cells.len()
                    ))
                    .into());
                };
                let (checked, kept) =
                    trial::check_keeping(&project, scenario, cell, &options, true);
                say_error(scenario, cell, &checked);
                print_rows(std::slice::from_ref(&checked.row), format, &outputs)?;
                let code = checked.row.status.exit_code();
                if let Some(kept) = kept {
                    shell_after_failure(kept, &checked, &outputs)?;
                }
                return Ok(code);
            }
            let jobs = jobs
                .unwrap_or_else(|| trial::default_jobs(options.machine.memory_mib))
                .max(1);
            outputs.events.line(&format!(
                "vmrepro: {} cell(s), {jobs} at a time",
                cells.len()
            ));
            let results = trial::check_all(&project, cells, &options, jobs, say_error)?;
            let worst = verdict::exit_code(results.iter().map(|(checked, _)| checked.row.status));
            let mut rows: Vec<report::Row> = results
                .into_iter()
                .map(|(checked, _)| checked.row)
                .collect();
            report::sort_rows(&mut rows);
            print_rows(&rows, format, &outputs)?;
            Ok(worst)
        }
    }
}

fn run_options(outputs: &Outputs) -> Result<RunOptions> {
    tools::ensure_tools(&outputs.events, outputs.settings.install)?;
    let accel = outputs.settings.accel()?;
    outputs.events.line(&format!(
        "vmrepro: accelerator {} ({})",
        accel.accel.name(),
        accel.reason
    ));
    Ok(outputs.settings.run_options(outputs.cache(), accel))
}

/// The cell (and the scenario whose steps run first) that `shell` and
/// `exec` boot.
fn guest_of(project: &Project, guest: &GuestArgs) -> Result<(Option<Scenario>, Cell)> {
    let scenario = guest
        .after
        .as_deref()
        .map(|name| project.scenario(name))
        .transpose()?;
    let cell = Cell {
        release: project.recipe(&guest.release)?.release.clone(),
        kernel: parse_kernel(project, &guest.kernel)?,
    };
    Ok((scenario, cell))
}

fn parse_kernel(project: &Project, name: &str) -> Result<KernelFlavour> {
    Ok(project.kernel_flavour(name)?)
}

/// The project's kernel flavours that are built from a recipe.
fn built_kernels(project: &Project) -> Vec<(&str, &vmrepro::recipe::KernelRecipe)> {
    project
        .kernels
        .iter()
        .filter_map(|(name, source)| match source {
            vmrepro::recipe::KernelSource::Recipe(recipe) => Some((name.as_str(), recipe)),
            vmrepro::recipe::KernelSource::Prebuilt { .. } => None,
        })
        .collect()
}

fn pick_cell(
    project: &Project,
    scenario: &Scenario,
    release: Option<&str>,
    kernel: Option<&str>,
) -> Result<Cell> {
    let release = match release {
        Some(r) => r.to_owned(),
        None => scenario.matrix.releases[0].clone(),
    };
    let kernel = match kernel {
        Some(k) => parse_kernel(project, k)?,
        None => scenario.matrix.kernels[0].clone(),
    };
    let cell = Cell { release, kernel };
    if !scenario.matrix.cells().contains(&cell) {
        let cells = scenario.matrix.cell_names();
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

/// `--shell-fail` opens a shell on the user's terminal; without one it
/// would wait for input that never comes.
fn need_terminal() -> Result<()> {
    use std::io::IsTerminal as _;
    if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
        return Ok(());
    }
    Err(UsageError(
        "--shell-fail opens a shell in the failed guest and needs a terminal on standard input and output; without one (CI), read the report and the artifacts instead"
            .into(),
    )
    .into())
}

/// Says what failed, then hands the terminal to the kept guest's shell.
fn shell_after_failure(
    kept: trial::KeptGuest,
    checked: &trial::Checked,
    outputs: &Outputs,
) -> Result<()> {
    outputs.terminal.stop_live();
    eprintln!(
        "\nvmrepro: {}\nvmrepro: the guest is kept as the failure left it",
        checked.row.verdict
    );
    kept.shell(interactive)?;
    eprintln!("\nvmrepro: left the shell; the guest is stopped");
    Ok(())
}

/// Prints a trial's error as it happens (skips are said in the table).
fn say_error(scenario: &Scenario, cell: &Cell, checked: &trial::Checked) {
    if let Err(e) = &checked.outcome {
        if checked.row.status != verdict::Status::Skipped {
            eprintln!("vmrepro: {} on {cell}: {e}", scenario.name);
        }
    }
    // insta's own diff is for `cargo test`; here the difference is said
    // in the command's words (its text is the captures', already inert).
    if let Err(vmrepro::snapshot::SnapshotError::Differs { path, diff, .. }) = &checked.snapshot {
        eprintln!(
            "vmrepro: {} on {cell}: the captures differ from {path}:\n{}",
            scenario.name,
            diff.trim_end()
        );
    }
}

fn print_rows(rows: &[report::Row], format: Format, outputs: &Outputs) -> Result<()> {
    let colour = outputs.colour;
    match format {
        Format::Text if rows.is_empty() => {
            out!("no results yet: run `vmrepro run` or `cargo test`")
        }
        Format::Text if colour => {
            let table = report::table(rows);
            let mut lines = table.lines();
            if let Some(header) = lines.next() {
                out!("{header}");
            }
            // The table keeps the rows' order, so each line has its row.
            for (line, row) in lines.zip(rows) {
                out!("\x1b[{}m{line}\x1b[0m", row.status.colour());
            }
        }
        Format::Text => outp!("{}", report::table(rows)),
        Format::Json => out!("{}", serde_json::to_string_pretty(rows)?),
        Format::Markdown => outp!("{}", report::markdown_table(rows)),
    }
    Ok(())
}

fn images(project: &Project, command: ImagesCommand, outputs: &Outputs) -> Result<u8> {
    let cache = outputs.cache();
    let recipe_of = |release: &str| project.recipe(release).map_err(anyhow::Error::from);
    match command {
        ImagesCommand::List {
            format: ListFormat::Json,
        } => {
            out!("{}", serde_json::to_string_pretty(&cache.list())?);
            Ok(EXIT_PASS)
        }
        ImagesCommand::List { .. } => {
            out!("cache: {}", cache.root().display());
            for row in cache.list() {
                out!(
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
            tools::ensure_tools(&outputs.events, outputs.settings.install)?;
            if !no_kernel {
                for (name, recipe) in built_kernels(project) {
                    let kernel = kernel::built(&cache, name, recipe)?;
                    out!(
                        "kernel {name:<10} {} ({})",
                        kernel.release,
                        kernel.image.display()
                    );
                }
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
                out!(
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
                .filter(|n| !matches!(n.as_str(), "kernels" | "warm"))
                .map(|n| recipe_of(n).map(|r| r.release.clone()))
                .collect::<Result<_>>()?;
            let removed = cache.remove(|row| {
                names.is_empty()
                    || (row.kind == kernel::KIND && names.iter().any(|n| n == "kernels"))
                    || (row.kind == vmrepro::warm::KIND && names.iter().any(|n| n == "warm"))
                    || releases.iter().any(|release| {
                        row.name == *release || row.name.starts_with(&format!("{release}-"))
                    })
            })?;
            for row in &removed {
                out!("removed {}/{}", row.kind, row.name);
            }
            if removed.is_empty() {
                out!("nothing to remove");
            }
            Ok(EXIT_PASS)
        }
        ImagesCommand::Key { release, kernel } => {
            if let Some(name) = kernel {
                let recipes = built_kernels(project);
                let (name, recipe) =
                    match (name.as_str(), recipes.as_slice()) {
                        ("", [only]) => *only,
                        ("", _) => {
                            return Err(UsageError(format!(
                            "name the kernel flavour: --kernel FLAVOUR (built from a recipe: {})",
                            recipes.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                        ))
                            .into())
                        }
                        (name, _) => {
                            *recipes.iter().find(|(n, _)| *n == name).ok_or_else(|| {
                                UsageError(format!(
                            "{name:?} is not a kernel flavour built from a recipe (those are: {})",
                            recipes.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                        ))
                            })?
                        }
                    };
                out!("{}", kernel::key(&cache, name, recipe)?);
            } else if let Some(release) = release {
                out!("{}", image::key(recipe_of(&release)?));
            }
            Ok(EXIT_PASS)
        }
        ImagesCommand::Import { release, file } => {
            tools::ensure_tools(&outputs.events, outputs.settings.install)?;
            let recipe = recipe_of(&release)?;
            let imported = image::import(&cache, recipe, &file)?;
            out!(
                "imported {} as the {release} image ({}; stock kernel {})",
                file.display(),
                imported.dir.display(),
                imported.manifest.stock_kernel_release
            );
            Ok(EXIT_PASS)
        }
    }
}

/// `vmrepro setup`: installs what the host lacks and says what it has.
fn setup(outputs: &Outputs) -> Result<u8> {
    tools::ensure_tools(&outputs.events, outputs.settings.install)?;
    for tool in tools::TOOLS {
        let version = tools::tool_version(tool.command).unwrap_or_else(|| "installed".into());
        out!("{:<20} {version}", tool.command);
    }
    let accel = outputs.settings.accel()?;
    out!(
        "accelerator          {} ({})",
        accel.accel.name(),
        accel.reason
    );
    out!("cache                {}", outputs.settings.cache.display());
    Ok(EXIT_PASS)
}

/// What `vmrepro doctor` finds, for people (text) or programs (JSON).
#[derive(serde::Serialize)]
struct Doctor {
    tools: Vec<DoctorTool>,
    kernel_source: Option<DoctorTool>,
    accelerator: Result<String, String>,
    cache: DoctorCache,
    /// Releases of the project, where there is one.
    releases: Vec<DoctorRelease>,
    problems: usize,
}

#[derive(serde::Serialize)]
struct DoctorTool {
    name: String,
    found: Option<String>,
    version: Option<String>,
    purpose: String,
    fix: Option<String>,
}

#[derive(serde::Serialize)]
struct DoctorCache {
    path: PathBuf,
    entries: usize,
    bytes: u64,
}

#[derive(serde::Serialize)]
struct DoctorRelease {
    release: String,
    mirror: String,
    cached: bool,
    /// `None` when the archive answers, else why not.
    unreachable: Option<String>,
}

fn doctor(project: Option<&Project>, format: ListFormat, outputs: &Outputs) -> Result<u8> {
    let tools: Vec<DoctorTool> = tools::TOOLS
        .iter()
        .map(|tool| {
            let found = tools::find_command(tool.command);
            DoctorTool {
                name: tool.command.to_owned(),
                version: found
                    .as_ref()
                    .and_then(|_| tools::tool_version(tool.command)),
                fix: found
                    .is_none()
                    .then(|| tools::InstallPlan::for_host().shell_commands(&[*tool])),
                found: found.map(|p| p.display().to_string()),
                purpose: tool.purpose.to_owned(),
            }
        })
        .collect();
    let kernel_source = project.and_then(|p| {
        let (name, recipe) = built_kernels(p).into_iter().next()?;
        let source = &recipe.source_package;
        let version = tools::package_version(source);
        Some(DoctorTool {
            name: source.clone(),
            found: version.as_ref().map(|_| "installed".to_owned()),
            version,
            purpose: format!(
                "for kernel {name}; its first cell installs it (as root) or asks you to"
            ),
            fix: None,
        })
    });
    let cache = outputs.cache();
    let entries = cache.list();
    let releases = project
        .map(|p| {
            p.recipes
                .iter()
                .map(|(release, recipe)| DoctorRelease {
                    release: release.clone(),
                    mirror: recipe
                        .mirror()
                        .unwrap_or_else(|| "mmdebstrap's default".into()),
                    cached: image::lookup(&cache, recipe).is_some(),
                    unreachable: image::probe_reachable(recipe).err().map(|e| e.to_string()),
                })
                .collect()
        })
        .unwrap_or_default();
    let accelerator = outputs
        .settings
        .accel()
        .map(|a| format!("{} ({})", a.accel.name(), a.reason))
        .map_err(|e| e.to_string());
    let problems =
        tools.iter().filter(|t| t.found.is_none()).count() + usize::from(accelerator.is_err());
    let report = Doctor {
        tools,
        kernel_source,
        accelerator,
        cache: DoctorCache {
            path: cache.root().to_owned(),
            entries: entries.len(),
            bytes: entries.iter().map(|e| e.bytes).sum(),
        },
        releases,
        problems,
    };
    if format == ListFormat::Json {
        out!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_doctor(&report, project.is_some());
    }
    Ok(if report.problems == 0 {
        EXIT_PASS
    } else {
        EXIT_ENV
    })
}

fn print_doctor(report: &Doctor, in_project: bool) {
    out!("host tools:");
    for tool in &report.tools {
        match (&tool.found, &tool.fix) {
            (Some(path), _) => out!(
                "  ok       {:<20} {path} ({})",
                tool.name,
                tool.version.as_deref().unwrap_or("")
            ),
            (None, fix) => out!(
                "  MISSING  {:<20} {}; fix: run `vmrepro setup` as root, or:\n{}",
                tool.name,
                tool.purpose,
                fix.as_deref()
                    .unwrap_or("")
                    .lines()
                    .map(|l| format!("             {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        }
    }
    if let Some(source) = &report.kernel_source {
        match &source.version {
            Some(version) => out!(
                "  ok       {:<20} {version} (for the Linode-style kernel)",
                source.name
            ),
            None => out!(
                "  later    {:<20} not installed; {}",
                source.name,
                source.purpose
            ),
        }
    }
    match &report.accelerator {
        Ok(accel) => out!("accelerator: {accel}"),
        Err(e) => out!("accelerator: {e}"),
    }
    out!(
        "cache: {} ({} entries, {:.1} GiB)",
        report.cache.path.display(),
        report.cache.entries,
        report.cache.bytes as f64 / (1u64 << 30) as f64
    );
    if in_project {
        out!("releases:");
    } else {
        out!("releases: not in a vmrepro project (no images/ and scenarios/ here or above)");
    }
    for r in &report.releases {
        match (&r.unreachable, r.cached) {
            (None, cached) => out!(
                "  ok       {:<9} {}{}",
                r.release,
                r.mirror,
                if cached { " (image cached)" } else { "" }
            ),
            (Some(e), true) => out!("  ok       {:<9} image cached; mirror unreachable: {e}", r.release),
            (Some(e), false) => out!(
                "  skip     {:<9} {e}; its trials are skipped. Fix: set VMREPRO_MIRROR_{} to a mirror or proxy you can reach, or `vmrepro images import {} ROOTFS.tar`",
                r.release,
                r.release.to_uppercase(),
                r.release
            ),
        }
    }
    if report.problems == 0 {
        out!("no problems found");
    } else {
        out!("{} problem(s) found", report.problems);
    }
}

/// A scenario skeleton that runs as written.
const SKELETON: &str = include_str!("skeleton.toml");

fn new_scenario(project: &Project, name: &str) -> Result<u8> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(UsageError(format!("{name:?}: use only letters, digits, `-` and `_`")).into());
    }
    let path = project.scenarios_dir().join(format!("{name}.toml"));
    if path.exists() {
        return Err(UsageError(format!("{} exists already", path.display())).into());
    }
    std::fs::write(&path, SKELETON.replace("NAME", name))
        .with_context(|| format!("writing {}", path.display()))?;
    out!(
        "wrote {}\nedit it, then: vmrepro repro {name}",
        path.display()
    );
    Ok(EXIT_PASS)
}

/// The key that leaves the interactive shell: Ctrl-].
const ESCAPE: u8 = 0x1d;

/// Connects the terminal to the guest's shell until Ctrl-] or until the
/// guest goes away.
fn interactive(stream: std::os::unix::net::UnixStream) -> std::io::Result<()> {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    eprintln!("vmrepro: root shell in the guest; Ctrl-] leaves and stops the guest\r");
    let _raw = RawTerminal::enter();
    let done = Arc::new(AtomicBool::new(false));
    let mut to_guest = stream.try_clone()?;
    to_guest.write_all(b"\n")?;
    let input_done = done.clone();
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut byte = [0u8; 1];
        while !input_done.load(Ordering::SeqCst) {
            match stdin.read(&mut byte) {
                Ok(1) if byte[0] != ESCAPE => {
                    if to_guest.write_all(&byte).is_err() {
                        break;
                    }
                }
                _ => break,
            }
        }
        input_done.store(true, Ordering::SeqCst);
    });
    let mut from_guest = stream;
    let mut stdout = std::io::stdout();
    let mut buf = [0u8; 4096];
    while !done.load(Ordering::SeqCst) {
        match from_guest.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                stdout.write_all(&buf[..n])?;
                stdout.flush()?;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
    }
    done.store(true, Ordering::SeqCst);
    Ok(())
}

/// Puts the terminal in raw mode (when standard input is one) and restores
/// it when dropped.
struct RawTerminal {
    saved: Option<nix::sys::termios::Termios>,
}

impl RawTerminal {
    fn enter() -> RawTerminal {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let Ok(saved) = tcgetattr(&stdin) else {
            // Not a terminal: nothing to change or restore.
            return RawTerminal { saved: None };
        };
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &raw);
        RawTerminal { saved: Some(saved) }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                saved,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_skeleton_is_a_valid_scenario() {
        let text = SKELETON.replace("NAME", "example");
        let scenario = Scenario::parse(
            std::path::Path::new("example.toml"),
            &text,
            &vmrepro::scenario::Known {
                releases: vec!["bookworm".to_owned()],
                kernels: vec!["stock".to_owned()],
            },
        )
        .expect("the skeleton parses");
        assert_eq!(scenario.name, "example");
        assert!(scenario.has_reboot());
        assert_eq!(scenario.expect.survive_reboot, ["saved configuration"]);
    }

    #[test]
    fn usage_errors_map_to_exit_2() {
        let error = anyhow::Error::from(UsageError("bad".into()));
        assert_eq!(classify(&error), EXIT_USAGE);
    }
}
