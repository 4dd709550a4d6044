//! `vmrepro repro` and `vmrepro run`: trials checked, reported, and the
//! outcome table.

use anyhow::{Context as _, Result};

use vmrepro::check::{report, verdict};
use vmrepro::project::{Cell, Project, Scenario};
use vmrepro::run;

use super::flags::{Format, ReproArgs, RunArgs};
use super::terminal::{interactive, need_terminal};
use crate::{parse_kernel, run_options, Outputs, UsageError};

/// `vmrepro repro`: one trial, its Markdown report printed or written.
pub(crate) fn repro(project: &Project, args: ReproArgs, outputs: &Outputs) -> Result<u8> {
    let ReproArgs {
        scenario,
        release,
        kernel,
        output,
        shell_fail,
    } = args;
    let scenario = project.scenario(&scenario)?;
    let cell = pick_cell(project, &scenario, release.as_deref(), kernel.as_deref())?;
    if shell_fail {
        need_terminal()?;
    }
    let options = run_options(outputs)?;
    // The same path as `run` and the test target, so the same cell
    // gets the same verdict and exit status through all three.
    let (checked, kept) = run::check_keeping(project, &scenario, &cell, &options, shell_fail);
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
        shell_after_failure(kept, &checked, outputs)?;
    }
    Ok(code)
}

/// `vmrepro run`: the selected cells, many at once, and the outcome table.
pub(crate) fn run(project: &Project, args: RunArgs, outputs: &Outputs) -> Result<u8> {
    let RunArgs {
        scenarios,
        release,
        kernel,
        format,
        jobs,
        shard,
        shell_fail,
    } = args;
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
        .map(|k| parse_kernel(project, k))
        .transpose()?;
    let options = run_options(outputs)?;
    let cells = vmrepro::project::trials_of(&selected);
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
        let (checked, kept) = run::check_keeping(project, scenario, cell, &options, true);
        say_error(scenario, cell, &checked);
        print_rows(std::slice::from_ref(&checked.row), format, outputs)?;
        let code = checked.row.status.exit_code();
        if let Some(kept) = kept {
            shell_after_failure(kept, &checked, outputs)?;
        }
        return Ok(code);
    }
    let jobs = jobs
        .unwrap_or_else(|| run::default_jobs(options.machine.memory_mib))
        .max(1);
    outputs.events.line(&format!(
        "vmrepro: {} cell(s), {jobs} at a time",
        cells.len()
    ));
    let results = run::check_all(project, cells, &options, jobs, say_error)?;
    let worst = verdict::exit_code(results.iter().map(|(checked, _)| checked.row.status));
    let mut rows: Vec<report::Row> = results
        .into_iter()
        .map(|(checked, _)| checked.row)
        .collect();
    report::sort_rows(&mut rows);
    print_rows(&rows, format, outputs)?;
    Ok(worst)
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
    kept: run::KeptGuest,
    checked: &run::Checked,
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
fn say_error(scenario: &Scenario, cell: &Cell, checked: &run::Checked) {
    if let Err(e) = &checked.outcome {
        if checked.row.status != verdict::Status::Skipped {
            eprintln!("vmrepro: {} on {cell}: {e}", scenario.name);
        }
    }
    // insta's own diff is for `cargo test`; here the difference is said
    // in the command's words (its text is the captures', already inert).
    if let Err(vmrepro::check::snapshot::SnapshotError::Differs { path, diff, .. }) =
        &checked.snapshot
    {
        eprintln!(
            "vmrepro: {} on {cell}: the captures differ from {path}:\n{}",
            scenario.name,
            diff.trim_end()
        );
    }
}

pub(crate) fn print_rows(rows: &[report::Row], format: Format, outputs: &Outputs) -> Result<()> {
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
