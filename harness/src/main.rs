//! The `vmrepro` command line: a thin layer over the library.

#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use clap::Parser as _;

use vmrepro::cache::Cache;
use vmrepro::progress::{Events, Terminal};
use vmrepro::project::{Project, ProjectError};
use vmrepro::scenario::{Cell, KernelFlavour, Scenario};
use vmrepro::settings::Settings;
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
    ($($arg:tt)*) => { $crate::emit(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` with the same closed-pipe behaviour as [`out!`].
macro_rules! outp {
    ($($arg:tt)*) => { $crate::emit(format_args!($($arg)*)) };
}

mod cli;

use cli::doctor::{doctor, setup};
use cli::flags::{settings, Cli, Command, Format, GuestArgs, ListFormat};
use cli::images::images;
use cli::terminal::{interactive, need_terminal};

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
